"""Chapter 6 exercises: Residual Memory's readout, and the same as an O(1)-memory stream.

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


def residual_stream(tokens, step, state0, segment_len, mode="checkpoint"):
    """Residual Memory (Eq. 6-7) as a stream in O(1) memory: the collapse of Eq. 12-13.

    A matrix memory is read linearly, M(q) = S^T q, so for token t of segment s
        y_t = S_t^T q_t + sum_{i < s} S^(i)^T q_t = (S_t + R_s)^T q_t,    R_s = sum_{i < s} S^(i)
    (S_t: the online state after token t; S^(i): the state cached at the end of segment i). The N
    cached states need not be kept: only the online state and their running sum R [B, H, K, V].
    tokens: an iterable giving, token after token, (q_t, k_t, v_t, opts_t): q_t [B, H, K] (already
        multiplied by the scale), k_t [B, H, K], v_t [B, H, V], opts_t a dict of the memory's
        per-token scalars ([B, H] each; may be empty);
    step: the memory's update, step(state, k_t, v_t, **opts_t) -> new state, a tuple whose first
        item is the matrix S [B, H, K, V] (minimc's LinearMemory().step, DeltaMemory().step and
        SWLAMemory().step are such functions; SWLA's state also carries k_prev, v_prev);
    state0: the initial state (a tuple); segment_len: C (constant segments, the last may be short);
    mode: "checkpoint" (the online memory runs on across segments) or "independent" (it restarts
        from state0 at every segment start).
    Write it as a generator: per token, update the online state with step, then
    ``yield`` y_t = (S_t + R)^T q_t, [B, H, V]; after a segment's last token add its S to R (and
    restart from state0 in independent mode). Read one token at a time (no look-ahead) and hold
    only the online state, R and a counter: no list of states, tokens or outputs.
    Worked example: B = H = K = V = 1, linear memory, C = 2, q = k = [1, 1, 1], v = [1, 2, 3].
    checkpoint: S goes 1, 3 | 6 and R = 3 after segment 0, so y = [1, 3, 6 + 3] = [1, 3, 9];
    independent: S goes 1, 3 | 3, so y = [1, 3, 3 + 3] = [1, 3, 6].
    """
    raise NotImplementedError("residual_stream")
