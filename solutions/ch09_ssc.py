"""Chapter 9 exercise: the SSC router and its renormalised gates.

Sparse Selective Caching (Eq. 16-17) keeps, for every token, only the top-k completed segments
by score (all of them when fewer than k exist). The online memory is always read. The gates are
a softmax over the online memory and the selected segments only; every other segment gets a
gate of exactly zero, so its state never has to be read:

    R_t     = top-k_{i < s} r_t^(i)                                            (Eq. 16)
    gamma_t = softmax over {online} u R_t of the scores
    y_t     = gamma_t^on M^(s)_t(q_t) + sum_{i in R_t} gamma_t^(i) M^(i)(q_t)   (Eq. 17)

Grade:  python scripts/grade.py --chapter 9     (or: make grade CHAPTER=9)
"""
import torch


def topk_route(scores, online_score, valid, top_k):
    """SSC's router (Eq. 16) and gates (Eq. 17) for every token (and head).

    scores:       [..., N] float, r_t^(i) = <u_t, kbar_i> * temperature for each cached segment i
    online_score: [...]    float, the online memory's score
    valid:        bool, broadcastable to scores' shape [..., N]: True where segment i is completed
                  before the token (i < s), i.e. where it may be read at all
    top_k:        int >= 1
    Returns (gates, selected):
      gates    [..., N + 1]: a softmax over the online memory (LAST column) and the selected
               segments; exactly 0 for every segment not selected. Each row sums to 1.
               Use a numerically stable softmax (scores may be large).
      selected [..., k] int64 with k = min(top_k, N): the indices of the k highest-scoring VALID
               segments, in any order; -1 in the slots left over when fewer than k are valid.
    Gradients must flow from the gates back to the scores (the router is trained through them).

    Worked example (N = 3, top_k = 2): scores [2., 5., 1.], online_score 3., valid [T, T, F]:
    segment 2 is not valid, so both valid segments are selected (selected = [1, 0], or [0, 1])
    and gates = [e^2, e^5, 0, e^3] / (e^2 + e^5 + e^3) = [0.0420, 0.8438, 0, 0.1142].
    With top_k = 1: selected = [1], gates = [0, e^5, 0, e^3] / (e^5 + e^3) = [0, 0.8808, 0, 0.1192].
    """
    N = scores.shape[-1]
    k = min(top_k, N)
    masked = scores.masked_fill(~valid, float("-inf"))  # [..., N] invalid: never chosen
    top, idx = masked.topk(k, dim=-1)                                       # [..., k]
    selected = idx.masked_fill(top == float("-inf"), -1)                    # empty slots -> -1
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, idx, top > float("-inf"))
    logits = torch.cat([scores.masked_fill(~keep, float("-inf")),                # [..., N + 1]
                        online_score[..., None]], -1)
    return logits.softmax(-1), selected
