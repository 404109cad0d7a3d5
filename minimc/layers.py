"""Layers: projections + short convolution around a memory (with or without caching), causal
softmax attention, and a tiny language model. Every mixer reports its state size (numbers held
between tokens) and can stream: ``layer.stream().step(x_t)`` equals ``layer(x)[:, t]``."""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .caching import CachingStream, memory_caching, segment_bounds
from .checks import check_choice, check_positive_int
from .memories import MEMORIES, init_deep_weights, make_memory, recurrent_memory

class ShortConv(nn.Module):
    """Causal depthwise convolution as shift-and-add: y_t = sum_j w_j x_{t-j} (cheaper than a
    grouped Conv1d)."""

    def __init__(self, dim, kernel=4):
        super().__init__()
        w = torch.randn(kernel, dim) * kernel ** -0.5 * 0.5
        w[0] += 1.0                                                         # start near identity
        self.weight = nn.Parameter(w)

    def forward(self, x, past=None):
        """x: [B, T, D]; past: the previous kernel-1 inputs [B, kernel-1, D] (zeros at first)."""
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
        if self.conv is None:
            return 0
        kernel, dim = self.conv.weight.shape
        return (kernel - 1) * dim

    def project(self, x, past=None):
        """x [B, T, D] -> list of [B, T, H, K] (q, k, v[, u]) and the convolution's new past."""
        d_model = self.qkv.in_features
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3 \
                or x.shape[-1] != d_model:
            raise ValueError(f"x must be a float tensor [B, T, D] with D = d_model = {d_model}, "
                             f"got {getattr(x, 'dtype', type(x).__name__)} "
                             f"{tuple(getattr(x, 'shape', ()))}")
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
        check_positive_int(d_model=d_model, n_heads=n_heads, head_dim=head_dim)
        super().__init__(d_model, n_heads, head_dim, conv)

    def forward(self, x):
        (q, k, v), _ = self.project(x)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))                   # [B, H, T, K]
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)         # [B, H, T, K]
        return self.out(o.transpose(1, 2).flatten(2))                       # [B, T, D]

    def state_size(self, T):
        return 2 * T * self.H * self.K + self.conv_state()       # the KV cache grows with T

    def stream(self, seq_len=None):
        return _AttentionStream(self)


class _AttentionStream:
    def __init__(self, layer):
        self.layer, self.past, self.kv = layer, None, None

    def step(self, x):
        (q, k, v), self.past = self.layer.project(x, self.past)
        if self.kv is not None:
            k, v = torch.cat([self.kv[0], k], 1), torch.cat([self.kv[1], v], 1)   # [B, t, H, K]
        self.kv = (k, v)
        o = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
        return self.layer.out(o.transpose(1, 2).flatten(2))


# The recipe around each memory lives on its class (minimc/memories.py): feature_map,
# value_map, layer_scalars, layer_settings. Every value is a Decision, measured with
# scripts/diagnose_memories.py on MQAR (8 pairs, T = 64, 600 steps; seed 0 unless said):
# - decays start at sigmoid(5) = 0.993 per token: at 0.5 a pair written 40 tokens before its
#   query is scaled by 1e-12, and its gradient with it (SWLA 0.9% -> 94%);
# - error-correcting writes start small, sigmoid(-3) = 0.047 (delta's beta, Titans' lr): at 0.5
#   they erase each other before the keys have learned to differ (delta 2.6% -> 92% with
#   non-negative features too; Titans 2% at lr bias 0 and -2, 85% at -3);
# - DLA's writes only add: its lr starts at 0.5 (capped at 0.1 the writes were too weak: 0.8%);
# - non-negative q, k for every memory (signed unit features: linear 12%, delta 2%, DLA 68%,
#   Titans 9%), unit-normalised where the update needs bounded keys;
# - deep memories: curvature-normalised inner steps (without: DLA 2%, Titans NaN), values of
#   norm sqrt(K) (unit values: Titans 16%), chunks of 16.


class MemoryLayer(Mixer):
    """A recurrent memory as a sequence mixer, with Memory Caching when ``caching`` is given.

    caching: None (plain memory) or a dict of ``memory_caching`` options, e.g.
    ``dict(variant="grm", segment_len=8, mode="independent")``, and two of the layer's own:
    ``connector`` (default True: u = x W_u, its own projection; False: u = q, the paper's
    alternative) and ``gates`` ("content", default; "position": learned per-segment keys instead
    of pooled keys, the paper's "- Context-dependent" ablation, for at most ``max_segments``).
    The memory's class says how q, k, v are prepared (``feature_map``: elu+1, then unit norm for
    delta and deep memories; ``value_map``: deep memories' values get norm sqrt(K)) and how its
    per-token options are made from x (``layer_scalars``: scale * sigmoid(x W + bias)).
    ``decay=True`` also learns an optional decay (the linear memory's). Each head's output is
    RMS-normalised before the output projection (Decision: the paper's LayerNorm at the end of
    each deep-memory chunk, App. B, is not used). ``chunk_size`` None: the memory's default."""

    def __init__(self, d_model, n_heads=2, head_dim=16, memory="linear", caching=None, conv=4,
                 decay=False, chunk_size=None, expansion=4):
        check_choice("memory", memory, MEMORIES)
        check_positive_int(d_model=d_model, n_heads=n_heads, head_dim=head_dim, expansion=expansion)
        caching = dict(caching) if caching else None
        if caching:
            _check_caching_options(caching)
        connector = bool(caching) and caching.pop("connector", True)
        gates = caching.pop("gates", "content") if caching else "content"
        max_segments = caching.pop("max_segments", None) if caching else None
        super().__init__(d_model, n_heads, head_dim, conv, extra=int(connector))
        self.cls = cls = MEMORIES[memory]
        # The recipe, as the class says when the layer is built (a layer keeps its own).
        self.feature_map, self.value_map = cls.feature_map, cls.value_map
        self.layer_settings = dict(cls.layer_settings)
        if decay and not cls.optional_args:
            raise ValueError(f"decay=True: memory={memory!r} has no optional decay (only "
                             f"{[n for n, c in MEMORIES.items() if c.optional_args]} do)")
        self.memory, self.caching = memory, caching
        if gates == "position":                             # learned keys, one per segment index
            check_positive_int(max_segments=max_segments)
            keys = torch.randn(max_segments + 1, n_heads, head_dim) * head_dim ** -0.5
            self.gate_keys = nn.Parameter(keys)             # [M, H, K]
            self.caching["gate_keys"] = self.gate_keys
        self.scalars = {n: init for n, init in cls.layer_scalars.items()
                        if decay or n not in cls.optional_args}     # name: (bias, scale)
        self.scalar_proj = None
        if self.scalars:
            self.scalar_proj = nn.Linear(d_model, len(self.scalars) * n_heads)
            bias, scale = (torch.tensor(x, dtype=torch.float32)
                           for x in zip(*self.scalars.values()))             # [n], [n]
            with torch.no_grad():
                self.scalar_proj.bias.add_(bias.repeat_interleave(n_heads))   # [n * H]
            self.register_buffer("scalar_scale", scale[:, None], persistent=False)   # [n, 1]
        self.settings = {} if chunk_size is None else {"chunk_size": chunk_size}
        self.scale = None                                   # K ** -0.5
        if cls.deep:
            self.w1, self.w2 = (nn.Parameter(w) for w in init_deep_weights(n_heads, head_dim,
                                                                            expansion))
            self.scale = 1.0                                # q is unit-norm: read M(q) as is
        self.norm = nn.RMSNorm(head_dim)

    def inputs(self, x, past=None):
        """x [B, T, D] -> q, k, v, u ([B, T, H, K]; u None without caching: u = q), the memory's
        options (per-token [B, T, H] and settings) and the short convolution's new past."""
        heads, past = self.project(x, past)
        q, k, v = heads[:3]
        u = heads[3] if len(heads) > 3 else None
        if self.feature_map.startswith("elu+1"):        # non-negative features
            q, k = F.elu(q) + 1, F.elu(k) + 1
        if self.feature_map.endswith("l2"):             # unit norm
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if self.value_map is not None:                  # bounded targets: unit or sqrt(K)
            v = F.normalize(v, dim=-1) * (self.K ** 0.5 if self.value_map == "rms" else 1.0)
        opts = self.memory_settings()
        if self.scalar_proj is not None:
            s = torch.sigmoid(self.scalar_proj(x)).unflatten(-1, (len(self.scalars), self.H))
            s = s * self.scalar_scale                       # [B, T, n, H]
            opts.update(zip(self.scalars, s.unbind(2)))
        return q, k, v, u, opts, past

    def forward(self, x, return_info=False):
        """x [B, T, D] -> [B, T, D] (and the caching info: gates, states, ... with return_info)."""
        q, k, v, u, opts, _ = self.inputs(x)
        info = None
        if self.caching:
            res = memory_caching(q, k, v, u, memory=self.memory, return_info=return_info,
                                 scale=self.scale, check_nan=False, **self.caching, **opts)
            o, info = res if return_info else (res, None)
        else:
            o, _ = recurrent_memory(q, k, v, self.memory, scale=self.scale, check_nan=False,
                                    **opts)
        y = self.out(self.norm(o).flatten(2))                                 # [B, T, D]
        return (y, info) if return_info else y

    def state_size(self, T):
        """Numbers held between tokens at length T: online state, cached states, summaries."""
        per_state = self.new_memory().state_size(self.K, self.K)
        if not self.caching:
            return self.H * per_state + self.conv_state()
        c = self.caching
        n = len(segment_bounds(T, c.get("segment_len", 64), c.get("segmentation", "constant"))) - 1
        return self.H * (per_state * (n + 1) + n * self.K) + self.conv_state()

    def new_memory(self):
        """The memory object this layer runs (its chunk size, its initial weights)."""
        return make_memory(self.memory, self.memory_settings())[0]

    def memory_settings(self):
        """Settings handed to the memory: the class's layer settings, chunk_size if set, and a
        deep memory's initial weights."""
        s = {**self.layer_settings, **self.settings}
        if self.cls.deep:
            s["weights"] = (self.w1, self.w2)
        return s

    def stream(self, seq_len=None):
        return _MemoryStream(self, seq_len)


def _check_caching_options(caching):
    allowed = {"variant", "segment_len", "segmentation", "mode", "top_k", "pool", "temperature",
               "backend", "connector", "gates", "max_segments"}
    unknown = sorted(set(caching) - allowed)
    check_choice("gates", caching.get("gates", "content"), ("content", "position"))
    if unknown:
        raise ValueError(f"caching options {unknown} are not memory_caching options; "
                         f"allowed: {sorted(allowed)}")


class _MemoryStream:
    def __init__(self, layer, seq_len):
        c = layer.caching or {"segment_len": 1 << 62}                      # one segment: plain
        self.layer, self.past = layer, None
        self.cache = CachingStream(memory=layer.memory, seq_len=seq_len, scale=layer.scale,
                                   check_nan=False, **layer.memory_settings(), **c)

    def step(self, x):
        """x: [B, 1, D] -> [B, 1, D], equal to the layer's output at this position."""
        q, k, v, u, opts, self.past = self.layer.inputs(x, self.past)
        per_token = {n: opts[n] for n in self.layer.scalars}
        o = self.cache.step(q, k, v, u, **per_token)
        return self.layer.out(self.layer.norm(o).flatten(2))


class Block(nn.Module):
    def __init__(self, d_model, mixer, mlp=4):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.mixer = mixer
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp * d_model), nn.GELU(),
                                 nn.Linear(mlp * d_model, d_model))

    def forward(self, x):
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def make_mixer(d_model, mixer="linear", **options):
    """mixer: 'attention' or a memory name (linear, delta, swla, dla, titans)."""
    check_choice("mixer", mixer, ("attention", *MEMORIES))
    if mixer == "attention":
        return Attention(d_model, **options)
    return MemoryLayer(d_model, memory=mixer, **options)


class TinyLM(nn.Module):
    """Embedding -> n_layers x [norm, mixer, residual; norm, MLP, residual] -> norm -> head."""

    def __init__(self, vocab_size, d_model=32, n_layers=1, mixer="linear", mlp=4, **mixer_options):
        check_positive_int(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, mlp=mlp)
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, make_mixer(d_model, mixer, **mixer_options),
                                          mlp) for _ in range(n_layers))
        self.norm = nn.RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, ids, targets=None):
        """ids: [B, T]. Without targets: logits [B, T, vocab]. With targets ([B, T], -100 =
        ignore): (loss, logits at the labelled positions only, which saves the head's time)."""
        _check_ids(ids, targets, self.embed.num_embeddings)
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


# Tiny named presets (the MQAR set-up of results/README.md): 1 layer, d 32, 2 heads of 16;
# "<memory>-<variant>" adds Memory Caching with segments of 8, independent mode (Decision: it
# learned best in the one-seed prototype runs that chose this set-up, GRM 93% vs 86% with
# checkpoint at 1,000 steps; the library's default is checkpoint, the paper compares neither).
_BASE = dict(d_model=32, n_layers=1, n_heads=2, head_dim=16)
# Decision: deep memories with expansion 2 (the paper's is 4): a Titans training step then costs
# about 3x a linear one instead of about 4x (B 32, T 64, CPU; `make bench`), with MQAR accuracy
# as good (Titans 85 / 88 / 92% at expansion 2, 92 / 98 / 91% at 4, seeds 0-2).
_DEEP = dict(_BASE, expansion=2)


def _preset(mixer, variant=None, segment_len=8, mode="independent", **caching):
    base = _DEEP if mixer in ("dla", "titans") else _BASE
    if variant is None:
        return dict(base, mixer=mixer)
    return dict(base, mixer=mixer, caching=dict(variant=variant, segment_len=segment_len,
                                                mode=mode, **caching))


PRESETS = {
    "attention": _preset("attention"),
    "linear": _preset("linear"),
    "linear-residual": _preset("linear", "residual"),
    "linear-grm": _preset("linear", "grm"),
    "linear-grm-checkpoint": _preset("linear", "grm", mode="checkpoint"),
    "linear-ssc": _preset("linear", "ssc", top_k=4),
    "delta": _preset("delta"),
    "swla": _preset("swla"),
    "dla": _preset("dla"),
    "titans": _preset("titans"),
    "titans-grm": _preset("titans", "grm"),
    "titans-soup": _preset("titans", "soup"),
}


def _check_ids(ids, targets, vocab_size):
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32) or \
            ids.dim() != 2:
        raise TypeError(f"ids must be an integer tensor [B, T], got "
                        f"{getattr(ids, 'dtype', type(ids).__name__)} of shape "
                        f"{tuple(getattr(ids, 'shape', ()))}")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids must lie in [0, vocab_size) = [0, {vocab_size}), got values in "
                         f"[{ids.min().item()}, {ids.max().item()}]")
    if targets is not None and (not isinstance(targets, torch.Tensor)
                                or targets.shape != ids.shape):
        raise ValueError(f"targets must be a tensor shaped like ids {tuple(ids.shape)} (-100: no "
                         f"loss), got {tuple(getattr(targets, 'shape', ()))}")


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
    check_choice("preset", preset, sorted(PRESETS))
    return TinyLM(vocab_size, **{**PRESETS[preset], **overrides})
