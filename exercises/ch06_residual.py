"""Chapter 6 exercise: Residual Memory's readout.

Residual Memory (paper Eq. 6-7) adds the online memory's readout and the readouts of every cached
memory a token may read, with no weights at all:

    y_t = M^(s)_t(q_t) + sum_{i < s} M^(i)(q_t)          (token t in segment s)

For a linear memory M^(i)(q) = S^(i)^T q, with S^(i) the cached [K, V] state of segment i.

Grade:  python scripts/grade.py --chapter 6      (or: make grade CHAPTER=6)
"""
import torch


def residual_readout(online, states, q, segment_len):
    """Residual Memory's output (Eq. 7) for a linear memory and constant segments.

    online: [B, T, H, V], the online memory's readouts M^(s)_t(q_t), already computed;
    states: [B, H, N, K, V], the cached states S^(i) of all N segments (the last one included,
        although no token reads it: no token comes after the last segment);
    q: [B, T, H, K], the queries as the memory reads them (already multiplied by the scale);
    segment_len: C; token t lies in segment s = t // C and reads the cached states i < s.
    Returns y: [B, T, H, V],  y_t = online_t + sum_{i < s} S^(i)^T q_t.

    Worked example: C = 2, T = 3. Tokens 0 and 1 (segment 0) read no cached state: y = online.
    Token 2 (segment 1) reads S^(0) only: y_2 = online_2 + S^(0)^T q_2 (S^(1) is never read).
    """
    raise NotImplementedError("residual_readout")
