"""What chapter 4 builds by hand, as library facts: MemoryLayer is projections -> short causal
depthwise convolution -> feature map -> memory -> per-head RMSNorm -> output projection; TinyLM
is embedding -> pre-norm blocks -> RMSNorm -> head; train(steps=1) is one clipped AdamW step;
caching holds less state than attention exactly when segments are longer than (K + 1) / 2."""
import math

import pytest
import torch
import torch.nn.functional as F

import minimc
from minimc.layers import Attention, MemoryLayer, ShortConv, tiny_lm
from minimc.train import batch, lr_at, train

f64 = dict(dtype=torch.float64)


def conv(x, w):
    """Causal depthwise convolution as a grouped Conv1d: x [B, T, C], w [taps, C]."""
    taps, C = w.shape
    y = F.conv1d(F.pad(x.transpose(1, 2), (taps - 1, 0)), w.flip(0).T[:, None], groups=C)
    return y.transpose(1, 2)


def rms(x, g):
    return x * (x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps).rsqrt() * g


def layer_by_hand(layer, x):
    B, T, _ = x.shape
    h = conv(x @ layer.qkv.weight.T, layer.conv.weight)
    q, k, v = h.view(B, T, 3, layer.H, layer.K).unbind(2)                   # [B, T, H, K]
    if layer.cls.feature_map.startswith("elu+1"):
        q, k = F.elu(q) + 1, F.elu(k) + 1
    if layer.cls.feature_map.endswith("l2"):
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    opts = {}
    if layer.scalar_proj is not None:
        s = torch.sigmoid(x @ layer.scalar_proj.weight.T + layer.scalar_proj.bias)
        opts = dict(zip(layer.scalars, s.view(B, T, -1, layer.H).unbind(2)))
    o, _ = minimc.recurrent_memory(q, k, v, layer.memory, reference=True, **opts)
    return rms(o, layer.norm.weight).flatten(2) @ layer.out.weight.T


def test_short_conv_is_a_causal_depthwise_conv1d():
    torch.manual_seed(0)
    sc = ShortConv(12).double()
    x = torch.randn(2, 9, 12, **f64)
    y, past = sc(x)
    assert torch.allclose(y, conv(x, sc.weight))
    assert torch.equal(past, x[:, -3:])


@pytest.mark.parametrize("memory,options", [("linear", {}), ("linear", dict(decay=True)),
                                            ("delta", {})])
def test_memory_layer_is_its_pipeline(memory, options):
    torch.manual_seed(0)
    layer = MemoryLayer(32, n_heads=2, head_dim=8, memory=memory, **options).double()
    x = torch.randn(2, 21, 32, **f64)
    assert torch.allclose(layer_by_hand(layer, x), layer(x))


def test_tiny_lm_and_one_training_step_by_hand():
    torch.manual_seed(0)
    model = tiny_lm("linear", vocab_size=64, head_dim=8).double()
    ids, targets = batch(0, 4, 24, [3], 64, 0)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    P = params.__getitem__

    def loss_by_hand():
        x = F.embedding(ids, P("embed.weight"))
        blk = "blocks.0."
        h = rms(x, P(blk + "norm1.weight"))
        B, T, _ = h.shape
        hh = conv(h @ P(blk + "mixer.qkv.weight").T, P(blk + "mixer.conv.weight"))
        q, k, v = hh.view(B, T, 3, 2, 8).unbind(2)
        o, _ = minimc.recurrent_memory(F.elu(q) + 1, F.elu(k) + 1, v, "linear")
        x = x + rms(o, P(blk + "mixer.norm.weight")).flatten(2) @ P(blk + "mixer.out.weight").T
        m = F.gelu(rms(x, P(blk + "norm2.weight")) @ P(blk + "mlp.0.weight").T
                   + P(blk + "mlp.0.bias"))
        x = x + m @ P(blk + "mlp.2.weight").T + P(blk + "mlp.2.bias")
        logits = rms(x, P("norm.weight")) @ P("head.weight").T
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

    loss = loss_by_hand()
    assert torch.allclose(loss, model(ids, targets)[0])
    loss.backward()
    decay = [p for n, p in params.items() if p.dim() >= 2 and "conv" not in n]
    rest = [p for n, p in params.items() if not (p.dim() >= 2 and "conv" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": rest, "weight_decay": 0.0}], lr=lr_at(0, 1),
                            betas=(0.9, 0.98))
    torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
    opt.step()
    train(model, steps=1, batch_size=4, seq_len=24, num_kv_pairs=3, vocab_size=64, seed=0,
          eval_n=1, verbose=False, device="cpu")
    for n, p in model.named_parameters():
        assert torch.allclose(params[n], p), n


@pytest.mark.parametrize("K", [8, 16, 32])
def test_caching_holds_less_than_attention_beyond_the_break_even(K):
    T, H = 4096, 2
    attention = Attention(32, n_heads=H, head_dim=K).state_size(T)
    for C in (1, math.floor((K + 1) / 2), math.ceil((K + 1) / 2), 64):
        cached = MemoryLayer(32, n_heads=H, head_dim=K, caching=dict(
            variant="grm", segment_len=C, mode="independent")).state_size(T)
        assert (cached < attention) == (C > (K + 1) / 2), (K, C)
