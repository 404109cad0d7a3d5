"""Chapter 10 exercise: attention is Memory Caching with segments of one token (paper §4.1).

Take the simplest memory there is, a value-less vector memory that stores one token's key, and
cache it after every token (segment length 1). Its state after token i is (Eq. 18)

    M^(i)_1 = M^(i)_0 + k_i = b_K + x_i W_K          (the initial state b_K acts as a key bias)

GRM's gates over the cached memories, with the one-token segment's summary k_i = x_i W_K and the
connector u_t = x_t W_u, then read every cached memory with the query as a gate (Eq. 19-20):

    y_t = ( sum_{i <= t} softmax_i(u_t . k_i) (b_K + x_i W_K) )  *  sigmoid(x_t W_Q)

that is gated global softmax attention: queries u, keys k, values b_K + k, and an output gate.
(The paper prints the softmax denominator as a sum over l <= i; read it as l <= t.)

Grade:  python scripts/grade.py --chapter 10
"""
import torch


def gated_global_attention(x, w_u, w_k, b_k, w_q, temperature=1.0):
    """Memory Caching with one-token segments and a value-less memory (Eq. 18-20).

    x [B, T, D]; w_u, w_k, w_q [D, K] (row vectors: u = x @ w_u); b_k [K]; temperature: an
    inverse temperature, it MULTIPLIES the scores (the paper's Eq. 19 has none: 1.0).
        u = x @ w_u,  k = x @ w_k,  v' = b_k + k,  gate = sigmoid(x @ w_q)      each [B, T, K]
        a[t, i] = softmax over i <= t of temperature * (u_t . k_i)   (causal: 0 for i > t)
        y_t = (sum_i a[t, i] v'_i) * gate_t                                      y [B, T, K]
    Returns y in x's dtype. Use a numerically stable softmax (subtract the row's maximum, or
    torch.softmax on scores masked with -inf): scores may be large.
    Worked example: B = 1, T = 2, D = K = 1, w_u = w_k = w_q = [[1]], b_k = [1], x = [0, 1]:
    u = k = [0, 1], v' = [1, 2], gate = [0.5, 0.7311]. Token 0 reads only itself:
    y_0 = 1 * 0.5 = 0.5. Token 1: scores [0, 1], a = [0.2689, 0.7311],
    y_1 = (0.2689 * 1 + 0.7311 * 2) * 0.7311 = 1.7311 * 0.7311 = 1.2655.
    """
    raise NotImplementedError("gated_global_attention")
