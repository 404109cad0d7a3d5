"""Memory Caching (paper §3, Eq. 4-17): cache the memory's state at the end of every segment and
let each token read the online memory and the cached ones.

    y_t = Agg({M^(i)(q_t)}_{i < s}; M^(s)_t(q_t); q_t)                               (Eq. 5)

Variants of Agg: "residual" (Eq. 6-7), "grm" (Eq. 8-10), "soup" (Eq. 14-15), "ssc" (Eq. 16-17),
and "mean" (post-training caching, §4.3: an unlearned uniform average). Gates come from segment
summaries: r_t^(i) = <u_t, kbar_i> * temperature (an *inverse* temperature: larger is sharper),
with kbar_i the mean of segment i's keys (Decision; ``pool="sum"`` is the sum that §3.3 writes)
and, for the online segment, the causal running mean of its keys up to t (Decision).
"""
import torch

from .checks import (check_choice, check_finite, check_like, check_number, check_positive_int,
                     check_tensor)
from .memories import check_memory_args, make_memory, stack_states
from .readout import BACKENDS, CachedReadout, sparse_readout

VARIANTS = ("residual", "grm", "soup", "ssc", "mean")
MODES = ("checkpoint", "independent")
SEGMENTATIONS = ("constant", "log")
POOLS = ("mean", "sum")


def segment_bounds(T, segment_len, segmentation="constant"):
    """[(start, end), ...] covering 0..T. Constant: length C (the last may be shorter).
    Logarithmic (§4.2): the binary digits of T, largest power of two first (T = 37 -> 32, 4, 1);
    these depend on T, so a prefix is cut differently from the whole sequence."""
    check_positive_int(T=T)
    check_choice("segmentation", segmentation, SEGMENTATIONS)
    T = int(T)                                              # numpy / torch integers too
    if segmentation == "constant":
        check_positive_int(segment_len=segment_len)
        segment_len = int(segment_len)
        return [(a, min(a + segment_len, T)) for a in range(0, T, segment_len)]
    sizes = [1 << i for i in reversed(range(T.bit_length())) if T >> i & 1]
    ends = torch.tensor(sizes).cumsum(0).tolist()
    return list(zip([0] + ends[:-1], ends))


def gate(scores, online_score, valid, variant, top_k):
    """Gates over N cached memories and the online one (last column): [..., N + 1].

    scores: [..., N] (<u_t, kbar_i> * temperature), online_score: [...], valid: bool [..., N]
    (segment i is complete before t). Returns (gates, selected), selected [..., k] for SSC
    (-1 where fewer than k segments exist), else None."""
    check_choice("variant", variant, VARIANTS)
    if variant in ("residual", "mean"):                     # Eq. 7: a plain sum; mean: average
        ones = torch.cat([valid.to(scores.dtype).expand_as(scores),
                          torch.ones_like(scores[..., :1])], -1)           # [..., N + 1]
        return (ones / ones.sum(-1, keepdim=True) if variant == "mean" else ones), None
    masked = scores.masked_fill(~valid, float("-inf"))
    selected = None
    if variant == "ssc":                                    # Eq. 16: the top-k router
        k = min(top_k, scores.shape[-1])
        top, idx = masked.topk(k, dim=-1)                   # [..., k]
        selected = idx.masked_fill(top == float("-inf"), -1)
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, idx, top > float("-inf"))
        masked = scores.masked_fill(~keep, float("-inf"))
    return torch.cat([masked, online_score[..., None]], -1).softmax(-1), selected


def pool_keys(key_sum, count, pool):
    """A segment's summary from the sum of its keys and their number: mean or sum."""
    return key_sum / count if pool == "mean" else key_sum


def summaries(k, u, bounds, pool, temperature):
    """Scores of every completed segment and of the online segment for every token (Eq. 10, 16).
    Returns scores [B, T, H, N], online scores [B, T, H] and the summaries kbar [B, N, H, K]."""
    T = k.shape[1]
    first = torch.tensor([a for a, _ in bounds], device=k.device)          # [N]
    last = torch.tensor([b for _, b in bounds], device=k.device)           # [N]
    seg = _segment_of_each_token(bounds, k.device)                          # [T]
    key_sums = k.cumsum(1)                                  # [B, T, H, K] keys up to t
    at_end = key_sums[:, last - 1]                          # [B, N, H, K] up to each segment end
    before = torch.cat([torch.zeros_like(at_end[:, :1]), at_end[:, :-1]], 1)   # [B, N, H, K]
    length = (last - first).to(k.dtype)[:, None, None]      # [N, 1, 1]
    kbar = pool_keys(at_end - before, length, pool)         # [B, N, H, K]
    count = (torch.arange(1, T + 1, device=k.device) - first[seg]).to(k.dtype)[:, None, None]
    online = pool_keys(key_sums - before[:, seg], count, pool)             # [B, T, H, K]
    scores = torch.einsum("bthk,bnhk->bthn", u, kbar) * temperature         # [B, T, H, N]
    online_score = (u * online).sum(-1) * temperature                       # [B, T, H]
    return scores, online_score, kbar


def _segment_of_each_token(bounds, device):
    return torch.tensor([s for s, (a, b) in enumerate(bounds) for _ in range(b - a)],
                        device=device)                                      # [T]


def read_cache(mem, cache, q, gates, blocks, selected=None, backend="torch"):
    """sum_i gates_i M_i(q_t): the cached part of Eq. 9 / 17. cache leaves [B, H, N, ...],
    gates [B, T, H, N]; blocks [(a, b, n)]: tokens a:b may read states [:n]. Matrix memories use
    the blocked readout (SSC: only the selected states); a deep memory reads every state it may
    read, then weighs the reads (SSC's unselected states have gate 0)."""
    if mem.matrix and selected is not None and backend == "torch":
        return sparse_readout(q, cache[0], gates.gather(-1, selected.clamp_min(0)), selected,
                              check_nan=False)
    if mem.matrix:
        return CachedReadout.apply(q, cache[0], gates, blocks, backend)
    outs = []
    for a, b, n in blocks:
        reads = mem.read(tuple(x[:, :, :n] for x in cache), q[:, a:b])     # [B, C, H, n, V]
        outs.append(torch.einsum("bthn,bthnv->bthv", gates[:, a:b, :, :n], reads))
    return torch.cat(outs, 1)                                               # [B, T, H, V]


def mix_outputs(mem, gates, online_out, cache, q, blocks, selected=None, backend="torch"):
    """Eq. 7, 9, 17: y_t = g_on M^(s)_t(q_t) + sum_i g_i M^(i)(q_t). gates [B, T, H, N + 1]."""
    N = gates.shape[-1] - 1
    cached = read_cache(mem, cache, q, gates[..., :N], blocks, selected, backend)
    return gates[..., N:] * online_out + cached


def mix_weights(gates, online_states, cache):
    """Memory Soup: the souped weights of Eq. 15, theta*_t = g_on theta_t + sum_i g_i theta_i,
    the weights token t reads through (gates as in Eq. 10). gates [B, T, H, N + 1];
    online_states: every token's own state, leaves [B, H, T, ...]; cache leaves [B, H, N, ...]
    -> leaves [B, H, T, ...]."""
    g = gates.transpose(1, 2)                               # [B, H, T, N + 1]
    N = g.shape[-1] - 1
    mixed = []
    for x, c in zip(online_states, cache):
        g_on = g[..., N].reshape(*g.shape[:3], *(1,) * (x.dim() - 3))      # [B, H, T, 1, ...]
        mixed.append(g_on * x + torch.einsum("bhtn,bhn...->bht...", g[..., :N], c))
    return tuple(mixed)


def memory_caching(q, k, v, u=None, *, memory="linear", variant="grm", segment_len=64,
                   segmentation="constant", mode="checkpoint", top_k=2, pool="mean",
                   temperature=None, scale=None, gate_keys=None, return_info=False,
                   backend="torch", check_nan=True, **memory_options):
    """Memory Caching over a whole sequence (Eq. 4-17).

    q, k, u: [B, T, H, K]; v: [B, T, H, V]; memory options: per-token [B, T, H] tensors (decay,
    beta, a/b/c, lr, momentum) or settings (weights, chunk_size). ``u=None`` means u = q (the
    paper's alternative to a connector); ``temperature`` (an inverse temperature: it multiplies
    the scores) and ``scale`` default to K ** -0.5 (Decision; 1.0 is the paper read literally).
    ``gate_keys`` [M, H, K] (M >= N + 1): position-only gates, the paper's "- Context-dependent"
    ablation (Table 5): segment i is scored with the learned key gate_keys[i] and the online
    memory with gate_keys[-1] instead of their pooled keys, so a segment's weight depends on
    the token and the segment's index, never on what the segment holds.
    ``backend="triton"`` runs the cached readout of a matrix memory in the Triton kernel.
    Returns o: [B, T, H, V], and with ``return_info`` a dict: gates [B, T, H, N + 1] (column N
    = the online memory), selected (SSC), bounds, states (cached, leaves [B, H, N, ...]),
    summaries kbar [B, N, H, K]."""
    mem, opts = make_memory(memory, memory_options)
    u = q if u is None else u
    check_caching_args(q, k, v, u, mem, opts, variant, segment_len, segmentation, mode, top_k,
                       pool, temperature, scale, backend, check_nan)
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    temperature = K ** -0.5 if temperature is None else temperature
    q = q * scale
    bounds = segment_bounds(T, segment_len, segmentation)
    N = len(bounds)
    if gate_keys is not None:
        check_gate_keys(gate_keys, N, q)

    # 1. The online memory, segment by segment; the end state of each segment is cached.
    state0 = state = mem.init_state(q, k, v)
    outs, ends = [], []
    run = mem.token_states if variant == "soup" else mem.forward
    sizes = [b - a for a, b in bounds]
    for qs, ks, vs, *span in zip(*(x.split(sizes, 1) for x in (q, k, v, *opts.values()))):
        state = state0 if mode == "independent" else state
        out, state = run(qs, ks, vs, state, **dict(zip(opts, span)))
        outs.append(out)                                    # soup: states [B, H, C, ...]
        ends.append(state)
    cache = stack_states(ends)                              # leaves [B, H, N, ...]

    # 2. Gates from segment summaries; token t may read segment i only when i < s(t).
    scores, online_score, kbar = summaries(k, u, bounds, pool, temperature)
    if gate_keys is not None:                               # position-only gates
        scores = torch.einsum("bthk,nhk->bthn", u, gate_keys[:N]) * temperature
        online_score = (u * gate_keys[-1]).sum(-1) * temperature
    seg = _segment_of_each_token(bounds, q.device)                          # [T]
    valid = seg[:, None, None] > torch.arange(N, device=q.device)          # [T, 1, N]
    gates, selected = gate(scores, online_score, valid, variant, top_k)    # [B, T, H, N + 1]

    # 3. Aggregate: mix the memories' weights (Soup) or their outputs (the others).
    if variant == "soup":                                   # Eq. 15
        online_states = tuple(torch.cat(x, 2) for x in zip(*outs))          # leaves [B, H, T, ...]
        out = mem.read_each(mix_weights(gates, online_states, cache), q)
    else:
        blocks = [(a, b, s) for s, (a, b) in enumerate(bounds)]
        out = mix_outputs(mem, gates, torch.cat(outs, 1), cache, q, blocks, selected, backend)
    if not return_info:
        return out
    return out, dict(gates=gates, selected=selected, bounds=bounds, states=cache, summaries=kbar)


def check_options(variant, segment_len, segmentation, mode, top_k, pool, temperature, scale,
                  backend):
    """The caching options shared by memory_caching and CachingStream."""
    for name, value, choices in (("variant", variant, VARIANTS), ("mode", mode, MODES),
                                 ("segmentation", segmentation, SEGMENTATIONS),
                                 ("pool", pool, POOLS), ("backend", backend, BACKENDS)):
        check_choice(name, value, choices)
    check_positive_int(segment_len=segment_len, top_k=top_k)
    for name, x in (("temperature", temperature), ("scale", scale)):
        if x is not None:
            check_number(name, x)


def check_gate_keys(gate_keys, N, q):
    H, K = q.shape[2:]
    check_tensor("gate_keys", gate_keys, (None, H, K), ("M", "H", "K"))
    check_like("gate_keys", gate_keys, q)
    if gate_keys.shape[0] < N + 1:
        raise ValueError(f"gate_keys has M = {gate_keys.shape[0]} rows: a sequence with N = {N} "
                         f"segments needs N + 1 = {N + 1} (one per segment and the online one)")


def check_caching_args(q, k, v, u, mem, opts, variant, segment_len, segmentation, mode, top_k,
                       pool, temperature, scale, backend, check_nan=True):
    check_options(variant, segment_len, segmentation, mode, top_k, pool, temperature, scale,
                  backend)
    check_memory_args(q, k, v, mem, opts, check_nan)
    check_tensor("u", u, q.shape, ("B", "T", "H", "K"))
    check_like("u", u, q)
    if check_nan:
        check_finite(u=u)
    if backend == "triton":
        if not mem.matrix or variant == "soup":
            raise ValueError(f"backend='triton' runs the cached readout of a matrix memory "
                             f"(variants residual, grm, ssc, mean); {type(mem).__name__} with "
                             f"variant={variant!r} has none: use backend='torch'")
        if q.dtype not in (torch.float32, torch.float16):
            raise TypeError(f"backend='triton' takes float32 or float16, got {q.dtype} "
                            "(backend='torch' takes any float)")


class CachingStream:
    """Streaming decoder: one token at a time with a growing cache of states (Eq. 5).

    ``step(q, k, v, u, **per_token)`` takes [B, 1, H, D] inputs (per-token options [B, 1, H])
    and returns [B, 1, H, V]; the outputs equal ``memory_caching`` over the whole sequence. A
    deep memory's chunked form takes a chunk's gradients at the chunk's starting weights, so the
    stream keeps the tokens of the current chunk and reruns the memory over them from the
    chunk's start (``mem.stream_chunk`` tokens at most). Logarithmic segmentation depends on
    the whole length: pass ``seq_len``."""

    def __init__(self, *, memory="linear", variant="grm", segment_len=64,
                 segmentation="constant", mode="checkpoint", top_k=2, pool="mean",
                 temperature=None, scale=None, gate_keys=None, seq_len=None, backend="torch",
                 check_nan=True, **settings):
        check_options(variant, segment_len, segmentation, mode, top_k, pool, temperature, scale,
                      backend)
        if seq_len is not None:
            check_positive_int(seq_len=seq_len)
        if segmentation == "log" and seq_len is None:
            raise ValueError("segmentation='log' depends on the sequence length: pass seq_len")
        self.mem, per_token = make_memory(memory, settings)
        if per_token:
            raise ValueError(f"pass per-token options {sorted(per_token)} to step(), not to "
                             "CachingStream()")
        self.variant, self.mode, self.top_k, self.pool = variant, mode, top_k, pool
        self.temperature, self.scale, self.backend = temperature, scale, backend
        self.gate_keys = gate_keys
        self.check_nan, self.seq_len = check_nan, seq_len
        bounds = segment_bounds(seq_len, segment_len, segmentation) if seq_len else None
        self.ends = {b for _, b in bounds} if segmentation == "log" else None
        self.segment_len = segment_len
        self.t, self.cache, self.kbar, self.shape = 0, [], [], None

    def _check(self, q, k, v, u, per_token):
        check_tensor("q", q, (None, 1, None, None), ("B", "T=1", "H", "K"))
        if self.shape is None:
            self.shape = (q.shape, v.shape[-1], q.dtype, q.device)
        shape, V, dtype, device = self.shape
        if q.shape != shape or q.dtype != dtype or q.device != device:
            raise ValueError(f"q must keep the first step's shape, dtype and device "
                             f"({tuple(shape)}, {dtype}, {device}), got ({tuple(q.shape)}, "
                             f"{q.dtype}, {q.device})")
        check_tensor("v", v, (*shape[:3], V), ("B", "T=1", "H", "V"))
        check_tensor("u", u, shape, ("B", "T=1", "H", "K"))
        check_like("u", u, q)
        check_memory_args(q, k, v, self.mem, per_token, self.check_nan)
        if self.check_nan:
            check_finite(u=u)
        if self.seq_len is not None and self.t >= self.seq_len:
            raise ValueError(f"this stream was made for seq_len = {self.seq_len} tokens; "
                             f"step {self.t + 1} is past its end")

    def step(self, q, k, v, u=None, **per_token):
        u = q if u is None else u
        unknown = sorted(set(per_token) - set(self.mem.token_args))
        if unknown:
            raise ValueError(f"{type(self.mem).__name__} does not take {unknown}; its per-token "
                             f"options are {sorted(self.mem.token_args)}")
        per_token = {n: x for n, x in per_token.items() if x is not None}
        self._check(q, k, v, u, per_token)
        K = q.shape[-1]
        scale = K ** -0.5 if self.scale is None else self.scale
        temperature = K ** -0.5 if self.temperature is None else self.temperature
        q = q * scale
        if self.t == 0:
            self.initial = self.mem.init_state(q, k, v)
            self._start_segment(self.initial, k)
        # The online memory: rerun the current chunk from its start state (one token: a step).
        self.chunk.append((q, k, v, per_token))
        qs, ks, vs = (torch.cat(x, 1) for x in list(zip(*self.chunk))[:3])  # [B, c, H, D]
        opts = {n: torch.cat([c[3][n] for c in self.chunk], 1) for n in per_token}
        o, self.state = self.mem.forward(qs, ks, vs, self.chunk_start, **opts)
        o = o[:, -1:]                                                       # [B, 1, H, V]
        self.key_sum, self.count = self.key_sum + k, self.count + 1
        n = len(self.cache)
        if n:                                                   # the same gates and mixing
            summary = torch.stack(self.kbar, 1)                              # [B, n, H, K]
            online = pool_keys(self.key_sum, self.count, self.pool)           # [B, 1, H, K]
            if self.gate_keys is not None:                                   # position-only
                check_gate_keys(self.gate_keys, n, q)
                summary, online = self.gate_keys[None, :n], self.gate_keys[-1]
            scores = torch.einsum("bthk,bnhk->bthn", u, summary) * temperature
            valid = torch.ones(n, dtype=torch.bool, device=q.device)
            gates, selected = gate(scores, (u * online).sum(-1) * temperature, valid,
                                   self.variant, self.top_k)                  # [B, 1, H, n + 1]
            cache = stack_states(self.cache)                                 # leaves [B, H, n, ...]
            if self.variant == "soup":
                own = tuple(x[:, :, None] for x in self.state)               # [B, H, 1, ...]
                o = self.mem.read_each(mix_weights(gates, own, cache), q)
            else:
                o = mix_outputs(self.mem, gates, o, cache, q, [(0, 1, n)], selected,
                                self.backend)
        if len(self.chunk) == self.mem.stream_chunk:
            self.chunk_start, self.chunk = self.state, []
        self.t += 1
        ends = self.t % self.segment_len == 0 if self.ends is None else self.t in self.ends
        if ends:
            self.cache.append(self.state)
            self.kbar.append(pool_keys(self.key_sum, self.count, self.pool)[:, 0])   # [B, H, K]
            self._start_segment(self.initial if self.mode == "independent" else self.state, k)
        return o

    def _start_segment(self, state, k):
        self.chunk_start, self.chunk = state, []
        self.key_sum, self.count = torch.zeros_like(k), 0
