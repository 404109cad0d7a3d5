"""Chapter 5 exercises: segments, and the cache of states.

Memory Caching (paper §3, Eq. 4-5) splits a sequence of T tokens into segments, runs the memory
inside each segment, and caches the memory's state at the END of every segment. A token of
segment s then reads the online memory and the cached states of segments 0..s-1.

Part 1, ``segment_bounds``: where the segments are (constant length C, or logarithmic: the binary
digits of T, largest power of two first, paper §4.2).
Part 2, ``readable_segments``: which cached states each token may read (causality).
Part 3, ``cache_states``: the cache itself, for a linear memory S_t = S_{t-1} + k_t v_t^T, in both
modes of §3.4 (checkpoint: one continuing memory; independent: every segment starts from zero).

Grade:  python scripts/grade.py --chapter 5      (or: make grade CHAPTER=5)
"""
import torch


def segment_bounds(T, segment_len, segmentation="constant"):
    """The segments covering tokens 0..T-1: a list of (start, end) pairs of ints, end exclusive.

    segmentation="constant": segments of ``segment_len`` = C tokens; the last one is shorter when
        C does not divide T, and C >= T gives a single segment [(0, T)].
        T = 10, C = 4 -> [(0, 4), (4, 8), (8, 10)]
    segmentation="log" (paper §4.2): one segment per binary digit 1 of T, the largest power of two
        first (``segment_len`` is ignored).
        T = 37 = 32 + 4 + 1 -> [(0, 32), (32, 36), (36, 37)];  T = 64 -> [(0, 64)]
    Any other segmentation raises ValueError. T >= 1 and C >= 1 are ints.
    """
    if segmentation == "constant":
        return [(a, min(a + segment_len, T)) for a in range(0, T, segment_len)]
    if segmentation == "log":
        sizes = [2 ** i for i in reversed(range(T.bit_length())) if (T >> i) & 1]  # T's bits
        bounds, start = [], 0
        for size in sizes:
            bounds.append((start, start + size))
            start += size
        return bounds
    raise ValueError(f"segmentation must be 'constant' or 'log', got {segmentation!r}")


def readable_segments(T, segment_len, segmentation="constant"):
    """Which cached states each token may read (the i < s of Eq. 5): a bool tensor [T, N].

    Token t lies in segment s(t), the one whose [start, end) holds t. It reads the online memory
    and the cached states of the COMPLETED segments i < s(t) only: its own segment's cached state
    (taken at the segment's end) would hold tokens after t. Segments as in ``segment_bounds``
    (constant length C, or "log"). Returns mask [T, N] (dtype torch.bool, N = number of segments)
    with mask[t, i] = (i < s(t)). A row's sum is the number of cached states its token reads:
    up to about T / C for constant segments, fewer than log2(T) for logarithmic ones.
    Worked example: T = 37, "log": segments (0, 32), (32, 36), (36, 37); tokens 0..31 read no
    cached state, tokens 32..35 read state 0, token 36 reads states 0 and 1 (mask[36] = [T, T, F]);
    the last segment's state is never read (no token comes after it).
    """
    bounds = segment_bounds(T, segment_len, segmentation)
    seg = torch.tensor([s for s, (a, b) in enumerate(bounds) for _ in range(a, b)])   # [T] s(t)
    return torch.arange(len(bounds))[None, :] < seg[:, None]                          # [T, N]


def cache_states(q, k, v, segment_len, mode="checkpoint"):
    """The cached states of a linear memory: its state at the END of every segment (Eq. 4).

    q, k: [B, T, H, K], v: [B, T, H, V]; constant segments of ``segment_len`` = C tokens (the last
    one may be shorter). The memory is S_t = S_{t-1} + k_t v_t^T, one [K, V] matrix per batch and
    head (q does not change the state; it is passed because a memory update sees whole tokens).
      mode="checkpoint": one continuing memory, snapshotted at each segment end:
          S^(i) = sum_{j < end_i} k_j v_j^T
      mode="independent": every segment starts from the zero state:
          S^(i) = sum_{start_i <= j < end_i} k_j v_j^T
    Returns the stack of the N cached states, [B, H, N, K, V] (N = ceil(T / C)), in k's dtype.

    Worked example: B = H = K = V = 1, k = v = [1, 2, 3], C = 2: segments (0, 2) and (2, 3);
    checkpoint -> [1 + 4, 1 + 4 + 9] = [5, 14];  independent -> [1 + 4, 9] = [5, 9].
    """
    B, T, H, K = k.shape
    S = k.new_zeros(B, H, K, v.shape[-1])  # [B, H, K, V] the memory
    states = []
    for a in range(0, T, segment_len):
        if mode == "independent":
            S = torch.zeros_like(S)  # a fresh memory per segment
        ks, vs = k[:, a:a + segment_len], v[:, a:a + segment_len]  # [B, C, H, K], [B, C, H, V]
        S = S + torch.einsum("bchk,bchv->bhkv", ks, vs)  # all writes of the segment
        states.append(S)
    return torch.stack(states, 2)                                           # [B, H, N, K, V]
