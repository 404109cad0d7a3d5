"""Chapter 7 exercise: GRM's causal gates.

Gated Residual Memory (paper Eq. 8-10) weighs each memory by a gate computed from the token's
connector u_t and a summary of the memory's segment:

    r_t^(i) = <u_t, kbar_i> * temperature          (Eq. 10; kbar_i: mean key of segment i)
    gamma_t = softmax over {i < s} and the online memory of r_t   (Eq. 8)
    y_t = gamma_t^on M^(s)_t(q_t) + sum_{i < s} gamma_t^(i) M^(i)(q_t)   (Eq. 9)

Grade:  python scripts/grade.py --chapter 7      (or: make grade CHAPTER=7)
"""
import torch


def causal_gates(u, k, segment_len, temperature):
    """GRM's gates over the cached segments and the online memory, for constant segments.

    u, k: [B, T, H, K]; segment_len: C (token t lies in segment s = t // C; the last segment may be
    shorter); N = ceil(T / C) segments. Summaries (mean pooling, this project's Decision):
      cached segment i:   kbar_i = mean of the keys k_j of segment i (all its tokens);
      online, at token t: the running mean of the keys of t's own segment, from its start up to and
                          including t (nothing after t).
    Scores: <u_t, summary> * temperature (it multiplies: an inverse temperature). Gates: a softmax
    over the completed segments i < s and the online memory; every segment i >= s gets gate
    exactly 0.
    Returns gates [B, T, H, N + 1]: column i < N is segment i, column N is the online memory.

    Worked example (B = H = K = 1): u = [1, 1, 1, 1], k = [1, 3, 5, 7], C = 2, temperature 1;
    two segments, gates [4, 3]. Tokens 0 and 1 have no completed segment: gates [0, 0, 1].
    Token 2: kbar_0 = 2, online summary 5 (its segment so far: k_2 only), so gates =
    [e^2, 0, e^5] / (e^2 + e^5) = [0.0474, 0, 0.9526]. Token 3 (the middle of segment 1): online
    summary (5 + 7) / 2 = 6, gates = [e^2, 0, e^6] / (e^2 + e^6) = [0.0180, 0, 0.9820].
    """
    raise NotImplementedError("causal_gates")
