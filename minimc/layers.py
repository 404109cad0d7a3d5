"""Layers: projections + short convolution around a memory (with or without caching), causal
softmax attention, and a tiny language model. Every mixer reports its state size (numbers held
between tokens) and can stream: ``layer.stream().step(x_t)`` equals ``layer(x)[:, t]``."""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .caching import CachingStream, memory_caching, segment_bounds
from .memories import init_deep_weights, make_memory, recurrent_memory

# Per-token scalars each memory takes, all produced by sigmoid(x W) ([B, T, H]).
SCALARS = {"linear": (), "delta": ("beta",), "swla": ("a", "b", "c"), "dla": ("lr",),
           "titans": ("lr", "momentum", "decay")}
# Deep memories: scalar = scale * sigmoid(x W + bias). Chunked test-time gradient steps diverge
# when lr / (1 - momentum) is large: with both at 0.5 Titans gave NaN at initialisation on
# 128-token MQAR (measured), so the inner lr is capped at 0.1 and the momentum at 0.5; decay
# starts at sigmoid(5) = 0.993 per token (0.5 would forget a pair within a few tokens).
DEEP_SCALARS = {"lr": (0.0, 0.1), "momentum": (0.0, 0.5), "decay": (5.0, 1.0)}    # name: (bias, scale)


class ShortConv(nn.Module):
    """Causal depthwise convolution as shift-and-add: y_t = sum_j w_j x_{t-j} (cheaper than Conv1d)."""

    def __init__(self, dim, kernel=4):
        super().__init__()
        w = torch.randn(kernel, dim) * kernel ** -0.5 * 0.5
        w[0] += 1.0                                                         # start near identity
        self.weight = nn.Parameter(w)

    def forward(self, x, past=None):
        """x: [B, T, D]; past: the previous kernel-1 inputs [B, kernel-1, D] (zeros at the start)."""
        n, T = self.weight.shape[0], x.shape[1]
        past = x.new_zeros(x.shape[0], n - 1, x.shape[2]) if past is None else past
        xp = torch.cat([past, x], 1)                                        # [B, T + n - 1, D]
        y = sum(self.weight[j] * xp[:, n - 1 - j: n - 1 - j + T] for j in range(n))
        return y, xp[:, xp.shape[1] - (n - 1):]


class Mixer(nn.Module):
    """Shared by attention and memories: q, k, v (and u) projections with a short convolution."""

    def __init__(self, d_model, n_heads, head_dim, conv, extra=0):
        super().__init__()
        self.H, self.K = n_heads, head_dim
        self.qkv = nn.Linear(d_model, (3 + extra) * n_heads * head_dim, bias=False)
        self.conv = ShortConv(3 * n_heads * head_dim, conv) if conv else None
        self.out = nn.Linear(n_heads * head_dim, d_model, bias=False)

    def conv_state(self):
        """Numbers the short convolution holds between tokens: the last kernel-1 inputs."""
        return 0 if self.conv is None else (self.conv.weight.shape[0] - 1) * self.conv.weight.shape[1]

    def project(self, x, past=None):
        """x [B, T, D] -> list of [B, T, H, K] (q, k, v[, u]) and the convolution's new past."""
        B, T, _ = x.shape
        h = self.qkv(x)
        n = 3 * self.H * self.K
        if self.conv is not None:
            c, past = self.conv(h[..., :n], past)
            h = torch.cat([c, h[..., n:]], -1)
        return list(h.reshape(B, T, -1, self.H, self.K).unbind(2)), past     # each [B, T, H, K]


class Attention(Mixer):
    """Causal softmax attention: O(L^2) time, a KV cache that grows with L."""

    def __init__(self, d_model, n_heads=2, head_dim=16, conv=4):
        super().__init__(d_model, n_heads, head_dim, conv)

    def forward(self, x, return_info=False):
        (q, k, v), _ = self.project(x)
        o = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
        return self.out(o.transpose(1, 2).flatten(2))                       # [B, T, D]

    def state_size(self, T):
        return 2 * T * self.H * self.K + self.conv_state()                 # the KV cache grows with T

    def stream(self, seq_len=None):
        return _AttentionStream(self)


class _AttentionStream:
    def __init__(self, layer):
        self.layer, self.past, self.kv = layer, None, None

    def step(self, x):
        (q, k, v), self.past = self.layer.project(x, self.past)
        self.kv = (k, v) if self.kv is None else (torch.cat([self.kv[0], k], 1), torch.cat([self.kv[1], v], 1))
        o = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, *self.kv)))
        return self.layer.out(o.transpose(1, 2).flatten(2))


class MemoryLayer(Mixer):
    """A recurrent memory as a sequence mixer, with Memory Caching when ``caching`` is given.

    caching: None (plain memory) or a dict of ``memory_caching`` options, e.g.
    ``dict(variant="grm", segment_len=8, mode="independent")``; a connector u = x W_u is added.
    Feature maps: elu+1 for linear/SWLA, L2-normalised q, k for delta and deep memories (and v
    for deep memories, whose per-token scalars are bounded: see DEEP_SCALARS).
    Each head's output is RMS-normalised before the output projection."""

    def __init__(self, d_model, n_heads=2, head_dim=16, memory="linear", caching=None, conv=4,
                 decay=False, chunk_size=64, expansion=4):
        super().__init__(d_model, n_heads, head_dim, conv, extra=1 if caching else 0)
        self.memory, self.caching = memory, dict(caching) if caching else None
        self.scalars = SCALARS[memory] + (("decay",) if memory == "linear" and decay else ())
        self.scalar_proj = nn.Linear(d_model, len(self.scalars) * n_heads) if self.scalars else None
        deep = memory in ("dla", "titans")
        bias_scale = [DEEP_SCALARS[n] if deep else (0.0, 1.0) for n in self.scalars]
        self.register_buffer("scalar_scale", torch.tensor([b for _, b in bias_scale])[:, None], persistent=False)
        if deep:
            with torch.no_grad():
                self.scalar_proj.bias.add_(torch.tensor([a for a, _ in bias_scale]).repeat_interleave(n_heads))
        self.settings = {"chunk_size": chunk_size}
        self.scale = None                                                   # K ** -0.5
        if memory in ("dla", "titans"):
            self.w1, self.w2 = (nn.Parameter(w) for w in init_deep_weights(n_heads, head_dim, expansion))
            self.settings["chunk_size"] = min(chunk_size, 16)
            self.scale = 1.0                                                # q is unit-norm: read M(q) as is
        self.norm = nn.RMSNorm(head_dim)

    def _inputs(self, x, past=None):
        heads, past = self.project(x, past)
        q, k, v = heads[:3]
        u = heads[3] if len(heads) > 3 else None                            # no connector: u = q
        if self.memory in ("linear", "swla"):
            q, k = F.elu(q) + 1, F.elu(k) + 1
        else:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if self.memory in ("dla", "titans"):
            v = F.normalize(v, dim=-1)                                      # bounded regression targets
        opts = self._settings()
        if self.scalar_proj is not None:
            s = torch.sigmoid(self.scalar_proj(x)).unflatten(-1, (len(self.scalars), self.H)) * self.scalar_scale
            opts.update(zip(self.scalars, s.unbind(2)))
        return q, k, v, u, opts, past

    def forward(self, x, return_info=False):
        q, k, v, u, opts, _ = self._inputs(x)
        if self.caching:
            res = memory_caching(q, k, v, u, memory=self.memory, return_info=return_info, scale=self.scale,
                                 check_nan=False, **self.caching, **opts)
            o, info = res if return_info else (res, None)
        else:
            (o, _), info = recurrent_memory(q, k, v, self.memory, scale=self.scale, check_nan=False, **opts), None
        y = self.out(self.norm(o).flatten(2))                               # [B, T, D]
        return (y, info) if return_info else y

    def state_size(self, T):
        """Numbers held between tokens at length T: online state, cached states, their summaries."""
        per_state = make_memory(self.memory, self._settings())[0].state_size(self.K, self.K)
        if not self.caching:
            return self.H * per_state + self.conv_state()
        c = self.caching
        n = len(segment_bounds(T, c.get("segment_len", 64), c.get("segmentation", "constant"))) - 1
        return self.H * (per_state * (n + 1) + n * self.K) + self.conv_state()

    def _settings(self):
        s = dict(self.settings)
        if self.memory in ("dla", "titans"):
            s["weights"] = (self.w1, self.w2)
        return s

    def stream(self, seq_len=None):
        return _MemoryStream(self, seq_len)


class _MemoryStream:
    def __init__(self, layer, seq_len):
        c = layer.caching or {"segment_len": 1 << 62}                       # one segment: the plain memory
        self.layer, self.past = layer, None
        self.cache = CachingStream(memory=layer.memory, seq_len=seq_len, scale=layer.scale, **c)

    def step(self, x):
        """x: [B, 1, D] -> [B, 1, D]. (A stream updates token by token: deep memories use chunk_size 1.)"""
        q, k, v, u, opts, self.past = self.layer._inputs(x, self.past)
        o = self.cache.step(q, k, v, u, **{**opts, "chunk_size": 1})
        return self.layer.out(self.layer.norm(o).flatten(2))


class Block(nn.Module):
    def __init__(self, d_model, mixer, mlp=4):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.mixer = mixer
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp * d_model), nn.GELU(), nn.Linear(mlp * d_model, d_model))

    def forward(self, x):
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def make_mixer(d_model, mixer="linear", **options):
    """mixer: 'attention' or a memory name (linear, delta, swla, dla, titans)."""
    if mixer == "attention":
        return Attention(d_model, **options)
    return MemoryLayer(d_model, memory=mixer, **options)


class TinyLM(nn.Module):
    """Embedding -> n_layers x [norm -> mixer -> residual, norm -> MLP -> residual] -> norm -> head."""

    def __init__(self, vocab_size, d_model=32, n_layers=1, mixer="linear", mlp=4, **mixer_options):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, make_mixer(d_model, mixer, **mixer_options), mlp)
                                    for _ in range(n_layers))
        self.norm = nn.RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, ids, targets=None):
        """ids: [B, T]. Without targets: logits [B, T, vocab]. With targets ([B, T], -100 = ignore):
        (loss, logits at the labelled positions only, which saves the head's time)."""
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if targets is None:
            return self.head(x)
        mask = targets != -100
        logits = self.head(x[mask])                                         # [n_labelled, vocab]
        return F.cross_entropy(logits, targets[mask]), logits

    def state_size(self, T):
        return sum(b.mixer.state_size(T) for b in self.blocks)


# Tiny named presets (the MQAR set-up of results/README.md): 1 layer, d 32, 2 heads of 16.
_BASE = dict(d_model=32, n_layers=1, n_heads=2, head_dim=16)
PRESETS = {
    "attention": dict(_BASE, mixer="attention"),
    "linear": dict(_BASE, mixer="linear"),
    "linear-residual": dict(_BASE, mixer="linear", caching=dict(variant="residual", segment_len=8, mode="independent")),
    "linear-grm": dict(_BASE, mixer="linear", caching=dict(variant="grm", segment_len=8, mode="independent")),
    "linear-grm-checkpoint": dict(_BASE, mixer="linear", caching=dict(variant="grm", segment_len=8)),
    "linear-ssc": dict(_BASE, mixer="linear", caching=dict(variant="ssc", segment_len=8, top_k=4, mode="independent")),
    "delta": dict(_BASE, mixer="delta"),
    "titans": dict(_BASE, mixer="titans"),
    "titans-grm": dict(_BASE, mixer="titans", caching=dict(variant="grm", segment_len=8, mode="independent")),
    "titans-soup": dict(_BASE, mixer="titans", caching=dict(variant="soup", segment_len=8, mode="independent")),
}


def with_caching(model, variant="mean", segment_len=32, mode="checkpoint", **options):
    """Post-training Memory Caching (paper §4.3): a copy of a trained model whose memory layers
    cache their state every ``segment_len`` tokens at inference. Nothing is learned: with no
    connector the gates use u = q, and ``variant="mean"`` ignores them (a uniform average of the
    online memory and the cached ones). Decision: ``mode="checkpoint"``, so the online memory is
    exactly the trained model's memory; for a linear memory an independent-mode mean is the plain
    memory divided by (n + 1), which the per-head RMSNorm undoes: nothing would change."""
    model = copy.deepcopy(model)
    for layer in model.modules():
        if isinstance(layer, MemoryLayer):
            layer.caching = dict(variant=variant, segment_len=segment_len, mode=mode, **options)
    return model


def tiny_lm(preset, vocab_size=256, **overrides):
    """A TinyLM from a named preset, e.g. ``tiny_lm("linear-grm")``."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return TinyLM(vocab_size, **{**PRESETS[preset], **overrides})
