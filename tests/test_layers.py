"""Layers and the tiny LM: streaming equals the whole sequence, state sizes, presets."""
import pytest
import torch

from minimc.layers import PRESETS, Attention, MemoryLayer, TinyLM, make_mixer, tiny_lm

MIXERS = {
    "attention": dict(mixer="attention"),
    "linear": dict(mixer="linear", decay=True),
    "linear-grm": dict(mixer="linear", caching=dict(variant="grm", segment_len=4)),
    "linear-residual-log": dict(mixer="linear", caching=dict(variant="residual", segment_len=4,
                                                             segmentation="log")),
    "delta-ssc": dict(mixer="delta", caching=dict(variant="ssc", segment_len=4, top_k=2,
                                                  mode="independent")),
    "swla-grm": dict(mixer="swla", caching=dict(variant="grm", segment_len=5)),
    "dla": dict(mixer="dla", chunk_size=1),
    "dla-chunked": dict(mixer="dla"),                           # the stream reruns a chunk of 16
    "titans-soup": dict(mixer="titans", chunk_size=1, caching=dict(variant="soup", segment_len=4)),
    "titans-grm-chunked": dict(mixer="titans", chunk_size=3, caching=dict(variant="grm",
                                                                         segment_len=7)),
    "linear-grm-position": dict(mixer="linear", caching=dict(variant="grm", segment_len=4,
                                                             gates="position", max_segments=6)),
    "linear-ssc-no-connector": dict(mixer="linear", caching=dict(variant="ssc", segment_len=4,
                                                                 connector=False)),
}


@pytest.mark.parametrize("name", MIXERS)
def test_streaming_layer_equals_whole_sequence(name):
    torch.manual_seed(0)
    layer = make_mixer(32, n_heads=2, head_dim=8, **MIXERS[name]).double()
    x = torch.randn(2, 23, 32, dtype=torch.float64)
    stream = layer.stream(seq_len=23)
    steps = torch.cat([stream.step(x[:, t:t + 1]) for t in range(23)], 1)
    assert (steps - layer(x)).abs().max() < 1e-10


def test_state_sizes():
    att = Attention(32, n_heads=2, head_dim=16, conv=0)
    assert att.state_size(100) == 2 * 100 * 2 * 16
    assert att.state_size(200) == 2 * att.state_size(100)
    plain = MemoryLayer(32, n_heads=2, head_dim=16, conv=0)
    assert plain.state_size(100) == plain.state_size(10_000) == 2 * 16 * 16     # fixed: H * K * V
    grm = MemoryLayer(32, n_heads=2, head_dim=16, conv=0,
                      caching=dict(variant="grm", segment_len=8))
    # 128 tokens, 16 segments: 15 cached states + the online one, plus 15 key summaries per head
    assert grm.state_size(128) == 2 * (16 * 16 * 16 + 15 * 16)
    log = MemoryLayer(32, n_heads=2, head_dim=16, conv=0,
                      caching=dict(variant="grm", segmentation="log"))
    assert log.state_size(127) == 2 * (16 * 16 * 7 + 6 * 16)                # 127 = 64+32+16+8+4+2+1
    titans = MemoryLayer(32, n_heads=2, head_dim=16, memory="titans", conv=0)
    assert titans.state_size(10) == 2 * 4 * 16 * 64                       # W1, W2 and their momenta


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_train_step(preset):
    torch.manual_seed(0)
    model = tiny_lm(preset, vocab_size=64)
    ids = torch.randint(0, 64, (3, 32))
    targets = torch.full_like(ids, -100)
    targets[:, 20:] = ids[:, 20:]
    loss, logits = model(ids, targets)
    assert logits.shape == (3 * 12, 64) and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model(ids).shape == (3, 32, 64)


def test_caching_moves_a_memory_along_the_state_size_axis():
    T = 128
    sizes = [tiny_lm(p).state_size(T) for p in ("linear", "linear-grm", "attention")]
    assert sizes[0] < sizes[1]                         # C = 8 at T = 128: near attention's KV cache
    assert tiny_lm("linear-grm").state_size(2 * T) > tiny_lm("linear-grm").state_size(T)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        tiny_lm("mamba")
    assert isinstance(TinyLM(16, mixer="attention"), TinyLM)


def test_position_gates_ignore_what_a_segment_holds():
    """gates="position" (the paper's "- Context-dependent" ablation): changing the keys of an
    earlier segment changes content gates but not position-only gates."""
    torch.manual_seed(0)
    x = torch.randn(1, 16, 32, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 1] += 1.0                                          # a token of segment 0
    for gates, same in (("position", True), ("content", False)):
        layer = MemoryLayer(32, caching=dict(variant="grm", segment_len=4, gates=gates,
                                             max_segments=4), conv=0).double()
        g1 = layer(x, return_info=True)[1]["gates"][0, 12:]
        g2 = layer(x2, return_info=True)[1]["gates"][0, 12:]  # tokens of the last segment
        assert torch.allclose(g1, g2) == same, gates
    with pytest.raises(ValueError, match="gate_keys has M = 3 rows"):
        MemoryLayer(32, caching=dict(variant="grm", segment_len=4, gates="position",
                                     max_segments=2))(torch.randn(1, 16, 32))


def test_connector_off_means_u_is_q():
    layer = MemoryLayer(32, caching=dict(variant="grm", segment_len=4, connector=False))
    assert layer.qkv.out_features == 3 * 2 * 16             # q, k, v: no W_u
