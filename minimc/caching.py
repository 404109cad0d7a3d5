"""Memory Caching (paper §3, Eq. 4-17): cache the memory's state at the end of every segment and
let each token read the online memory and the cached ones.

    y_t = Agg({M^(i)(q_t)}_{i < s}; M^(s)_t(q_t); context)                         (Eq. 5)

Variants of Agg: "residual" (Eq. 6-7), "grm" (Eq. 8-10), "soup" (Eq. 14-15), "ssc" (Eq. 16-17).
Gates come from segment summaries: r_t^(i) = <u_t, kbar_i> * temperature, with kbar_i the mean
(Decision; ``pool="sum"`` is the paper's literal Eq. 10) of segment i's keys, and for the online
segment the causal running mean of its keys up to t.
"""
import math

import torch

from .checks import check_caching_args, check_choice, check_positive_int
from .memories import _stack, make_memory

VARIANTS = ("residual", "grm", "soup", "ssc", "mean")    # "mean": post-training MC (§4.3), unlearned


def segment_bounds(T, segment_len, segmentation="constant"):
    """[(start, end), ...] covering 0..T. Constant: length C (last may be shorter). Logarithmic
    (§4.2): the binary digits of T, largest power of two first (T = 37 -> 32, 4, 1)."""
    T, segment_len = int(T), int(segment_len)                               # numpy / torch integers too
    if segmentation == "constant":
        return [(a, min(a + segment_len, T)) for a in range(0, T, segment_len)]
    if segmentation == "log":
        sizes = [1 << i for i in reversed(range(T.bit_length())) if T >> i & 1]
        ends = torch.tensor(sizes).cumsum(0).tolist()
        return list(zip([0] + ends[:-1], ends))
    raise ValueError(f"segmentation must be 'constant' or 'log', got {segmentation!r}")


def gate(scores, online_score, valid, variant, top_k):
    """Gates over N cached memories and the online one (last column): [..., N + 1].

    scores: [..., N] (<u_t, kbar_i> * temperature), online_score: [...], valid: bool [..., N]
    (segment i is complete before t). Returns (gates, selected) with selected [..., k] for SSC
    (-1 where fewer than k segments exist), else None."""
    if variant in ("residual", "mean"):                                     # Eq. 7: plain sum
        ones = torch.cat([valid.to(scores.dtype).expand_as(scores), torch.ones_like(scores[..., :1])], -1)
        return (ones / ones.sum(-1, keepdim=True) if variant == "mean" else ones), None   # mean: uniform average
    masked = scores.masked_fill(~valid, float("-inf"))
    selected = None
    if variant == "ssc":                                                    # Eq. 16: top-k router
        k = min(top_k, scores.shape[-1])
        top, idx = masked.topk(k, dim=-1)                                   # [..., k]
        selected = idx.masked_fill(top == float("-inf"), -1)
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, idx, top > float("-inf"))
        masked = scores.masked_fill(~keep, float("-inf"))
    return torch.cat([masked, online_score[..., None]], -1).softmax(-1), selected


def _summaries(k, u, bounds, pool, temperature):
    """Scores of every completed segment and of the online segment for every token (Eq. 10, 16).
    Segment i's summary is its mean key kbar_i; the online one, the running mean up to t."""
    B, T, H, K = k.shape
    first, last = torch.tensor(bounds, device=k.device).T                  # [N], [N]
    cs = k.cumsum(1)                                                        # [B, T, H, K]
    before = torch.cat([torch.zeros_like(cs[:, :1]), cs[:, last[:-1] - 1]], 1)  # sum before segment i, [B, N, H, K]
    kbar = cs[:, last - 1] - before                                         # [B, N, H, K]
    seg = torch.repeat_interleave(torch.arange(len(bounds), device=k.device), last - first)  # [T]
    count = torch.arange(1, T + 1, device=k.device) - first[seg]           # tokens of the online segment so far
    u_before = torch.einsum("bthk,bnhk->bthn", u, before).gather(-1, seg[None, :, None, None].expand(B, T, H, 1))
    online = (u * cs).sum(-1) - u_before[..., 0]                            # <u_t, running sum>, [B, T, H]
    scores = torch.einsum("bthk,bnhk->bthn", u, kbar)                       # [B, T, H, N]
    if pool == "mean":
        kbar = kbar / (last - first)[:, None, None].to(k.dtype)
        scores, online = scores / (last - first).to(k.dtype), online / count[:, None].to(k.dtype)
    return scores * temperature, online * temperature, kbar


def memory_caching(q, k, v, u=None, *, memory="linear", variant="grm", segment_len=64,
                   segmentation="constant", mode="checkpoint", top_k=2, pool="mean",
                   temperature=None, scale=None, return_info=False, backend="torch",
                   check_nan=True, **memory_options):
    """Memory Caching over a whole sequence (Eq. 4-17).

    q, k, u: [B, T, H, K]; v: [B, T, H, V]; memory options: per-token [B, T, H] tensors
    (decay, beta, a/b/c, lr, momentum) or settings (weights, chunk_size). ``u=None`` means u = q;
    ``temperature=None`` and ``scale=None`` mean K ** -0.5. Returns o: [B, T, H, V], and with
    ``return_info`` a dict: gates [B, T, H, N + 1] (column N = online memory), selected (SSC),
    bounds, states (cached states, leaves [B, H, N, ...]), summaries kbar [B, N, H, K]."""
    u = q if u is None else u
    check_caching_args(q, k, v, u, memory, variant, segment_len, segmentation, mode, top_k, pool,
                       memory_options, check_nan)
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    temperature = K ** -0.5 if temperature is None else temperature
    mem, opts = make_memory(memory, memory_options)
    q = q * scale
    bounds = segment_bounds(T, segment_len, segmentation)
    N = len(bounds)

    # 1. The online memory, segment by segment; the end state of each segment is cached.
    state0 = mem.init_state(q, k, v)
    state, outs, ends = state0, [], []
    sizes = [b - a for a, b in bounds]
    run = mem.token_states if variant == "soup" else mem.forward
    for qs, ks, vs, *span in zip(*(x.split(sizes, 1) for x in (q, k, v, *opts.values()))):
        state = state0 if mode == "independent" else state
        o, state = run(qs, ks, vs, state, **dict(zip(opts, span)))
        outs.append(o)
        ends.append(state)
    cache = _stack(ends)                                                    # leaves [B, H, N, ...]

    # 2. Gates from segment summaries; token t may read segment i only when i < s(t).
    scores, online_score, kbar = _summaries(k, u, bounds, pool, temperature)
    seg = torch.tensor([s for s, (a, b) in enumerate(bounds) for _ in range(b - a)], device=q.device)
    valid = seg[:, None, None] > torch.arange(N, device=q.device)          # [T, 1, N]
    gates, selected = gate(scores, online_score, valid, variant, top_k)    # [B, T, H, N + 1]

    # 3. Aggregate.
    if variant == "soup":                                                   # Eq. 15: mix weights, then read
        per_token = tuple(torch.cat(x, 2) for x in zip(*outs))              # leaves [B, H, T, ...]
        g = gates.permute(0, 2, 1, 3)                                       # [B, H, T, N + 1]
        mixed = tuple(_mix(g[..., N], x, g[..., :N], c) for x, c in zip(per_token, cache))
        out = mem.read_each(mixed, q)
    else:                                                                   # Eq. 7, 9, 17: mix outputs
        blocks = [(a, b, s) for s, (a, b) in enumerate(bounds)]
        cached = mem.read_cached(cache, q, gates[..., :N], blocks, selected, backend=backend)
        out = gates[..., N:] * torch.cat(outs, 1) + cached
    if not return_info:
        return out
    return out, dict(gates=gates, selected=selected, bounds=bounds, states=cache, summaries=kbar)


def _mix(g_online, online, g_cached, cache):
    """theta*_t = g_on theta_t + sum_i g_i theta_i (Eq. 14). online [B, H, T, ...], cache [B, H, N, ...]."""
    extra = (None,) * (online.dim() - 3)
    return g_online[(...,) + extra] * online + torch.einsum("bhtn,bhn...->bht...", g_cached, cache)


class CachingStream:
    """Streaming decoder: one token at a time with a growing cache of states (Eq. 5).

    ``step(q, k, v, u, **per_token)`` takes [B, 1, H, D] inputs and returns [B, 1, H, V]; its outputs
    equal ``memory_caching`` over the whole sequence (for deep memories, with chunk_size=1: a
    stream updates token by token). Logarithmic segmentation needs ``seq_len`` up front."""

    def __init__(self, *, memory="linear", variant="grm", segment_len=64, segmentation="constant",
                 mode="checkpoint", top_k=2, pool="mean", temperature=None, scale=None,
                 seq_len=None, **settings):
        for name, value, choices in (("variant", variant, VARIANTS), ("mode", mode, ("checkpoint", "independent")),
                                     ("segmentation", segmentation, ("constant", "log")), ("pool", pool, ("mean", "sum"))):
            check_choice(name, value, choices)
        check_positive_int("segment_len", segment_len)
        check_positive_int("top_k", top_k)
        if segmentation == "log" and seq_len is None:
            raise ValueError("segmentation='log' depends on the sequence length: pass seq_len")
        self.memory, self.settings = memory, settings
        self.variant, self.mode, self.top_k, self.pool = variant, mode, top_k, pool
        self.temperature, self.scale = temperature, scale
        self.ends = ({b for a, b in segment_bounds(seq_len, segment_len, segmentation)}
                     if segmentation == "log" else None)
        self.segment_len, self.t, self.cache, self.kbar = segment_len, 0, [], []
        self.state = None

    def step(self, q, k, v, u=None, **per_token):
        u = q if u is None else u
        K = q.shape[-1]
        mem, opts = make_memory(self.memory, {**self.settings, **per_token})
        scale = K ** -0.5 if self.scale is None else self.scale
        temperature = K ** -0.5 if self.temperature is None else self.temperature
        q = q * scale
        if self.state is None:
            self.init = self.state = mem.init_state(q, k, v)
            self.ksum, self.count = torch.zeros_like(k), 0
        o, self.state = mem.forward(q, k, v, self.state, **opts)
        self.ksum, self.count = self.ksum + k, self.count + 1
        online = self.ksum / self.count if self.pool == "mean" else self.ksum
        n = len(self.cache)
        if n:
            kbar = torch.stack(self.kbar, 1)                                # [B, n, H, K]
            scores = torch.einsum("bthk,bnhk->bthn", u, kbar) * temperature
            valid = torch.ones(n, dtype=torch.bool, device=q.device)
            gates, selected = gate(scores, (u * online).sum(-1) * temperature, valid, self.variant, self.top_k)
            cache = _stack(self.cache)                                      # leaves [B, H, n, ...]
            if self.variant == "soup":
                g = gates.permute(0, 2, 1, 3)                               # [B, H, 1, n + 1]
                mixed = tuple(_mix(g[..., n], x[:, :, None], g[..., :n], c) for x, c in zip(self.state, cache))
                o = mem.read_each(mixed, q)
            else:
                o = gates[..., n:] * o + mem.read_cached(cache, q, gates[..., :n])
        self.t += 1
        if (self.t % self.segment_len == 0) if self.ends is None else (self.t in self.ends):
            self.cache.append(self.state)
            self.kbar.append((self.ksum / self.count if self.pool == "mean" else self.ksum)[:, 0])
            self.ksum, self.count = torch.zeros_like(self.ksum), 0
            if self.mode == "independent":
                self.state = self.init
        return o
