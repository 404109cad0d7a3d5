"""Chapter 2 exercises: two better fixed-size memories, one token at a time, and the delta rule
over a whole sequence in chunks.

The step functions work on one token for every (batch, head) at once, in minimc's shapes: a state
matrix S [B, H, K, V], a key k [B, H, K], a value v [B, H, V], per-token scalars [B, H].
``delta_rule_chunked`` takes whole sequences: q, k [B, T, H, K], v [B, T, H, V], beta [B, T, H].

Grade:  make grade CHAPTER=2      (or: python scripts/grade.py --chapter 2)
"""
import torch
import torch.nn.functional as F


def delta_rule_step(S, k, v, beta):
    """One token of the delta rule (DeltaNet):

        k_hat = k / ||k||                                  (unit key, as minimc does it:
                                                            F.normalize(k, dim=-1), eps 1e-12)
        S_new = S + beta * k_hat (v - S^T k_hat)^T         (outer product of k_hat and the error)

    S: [B, H, K, V]; k: [B, H, K] (any length: normalise it here); v: [B, H, V]; beta: [B, H]
    (the write strength, in [0, 1]). Returns S_new [B, H, K, V]. beta = 0 leaves S unchanged;
    beta = 1 makes the memory return exactly v when read with k_hat (S_new^T k_hat = v).
    Worked example: K = V = 1, S = [[1]], k = [2], v = [3], beta = 0.5: k_hat = 1, the error is
    3 - 1 = 2 and S_new = 1 + 0.5 * 2 = [[2]].
    """
    k = F.normalize(k, dim=-1)                                             # [B, H, K] unit keys
    err = v - torch.einsum("bhkv,bhk->bhv", S, k)                          # v - S^T k: [B, H, V]
    return S + torch.einsum("bhk,bhv->bhkv", k, beta[..., None] * err)     # [B, H, K, V]


def swla_step(state, k, v, a, b, c):
    """One token of sliding-window linear attention with window 2 (SWLA, Eq. 28):

        S_t = a_t S_{t-1} + b_t k_{t-1} v_{t-1}^T + c_t k_t v_t^T

    state = (S [B, H, K, V], k_prev [B, H, K], v_prev [B, H, V]): the matrix and the previous
    token's key and value (zeros before the first token). k: [B, H, K]; v: [B, H, V];
    a, b, c: [B, H]. Keys are used as given (no normalisation). Returns the new state
    (S_t, k, v): the current key and value become the next token's k_prev, v_prev.
    Worked example: K = V = 1, S = [[1]], k_prev = [1], v_prev = [2], k = [1], v = [3],
    a = 0.5, b = 1, c = 2: S_t = 0.5 + 2 + 6 = [[8.5]], and the state is ([[8.5]], [1], [3]).
    """
    S, k_prev, v_prev = state
    S = a[..., None, None] * S                                             # decay: [B, H, K, V]
    S = S + torch.einsum("bhk,bhv->bhkv", b[..., None] * k_prev, v_prev)  # the previous pair, again
    S = S + torch.einsum("bhk,bhv->bhkv", c[..., None] * k, v)             # the current pair
    return S, k, v


def delta_rule_chunked(q, k, v, beta, chunk_size=64, scale=None):
    """The delta rule over a whole sequence, chunk by chunk (the WY / UT-transform form):

        S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T,        o_t = S_t^T (scale * q_t)

    Convention (minimc's DeltaMemory): keys are L2-normalised first, k = F.normalize(k, dim=-1);
    queries are NOT normalised, only multiplied by scale (None means K ** -0.5). S_0 = 0.
    Within a chunk of C tokens (keys K, values V, write strengths b, scaled queries Q, state S at
    its start) the writes u_i = b_i (v_i - S_{i-1}^T k_i), stacked as U [C, V], solve one lower
    triangular system, because S_{i-1} = S + sum_{j < i} k_j u_j^T:

        (I + tril(diag(b) K K^T, -1)) U = diag(b) (V - K S)      (-1: strictly below the diagonal)
        O      = Q S + tril(Q K^T) U                             (diagonal kept: t reads its write)
        S_next = S + K^T U

    (torch.linalg.solve_triangular(A, R, upper=False) solves A X = R.) q, k: [B, T, H, K];
    v: [B, T, H, V]; beta: [B, T, H] in (0, 1]; T need not be a multiple of chunk_size (the last
    chunk is shorter). Returns (o [B, T, H, V], S_T [B, H, K, V]) in q's dtype: the same S_T as
    delta_rule_step applied token by token.
    Worked example: B = H = K = V = 1, scale = 1, q = k = [1, 1], v = [2, 3], beta = [0.5, 0.5]:
    S goes 0.5 * 2 = 1, then 1 + 0.5 * (3 - 1) = 2, so o = [1, 2]. As one chunk (C = 2):
    [[1, 0], [0.5, 1]] U = [1, 1.5] gives U = [1, 1], O = [1, 1 + 1], S_T = 1 + 1 = 2.
    """
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    k = F.normalize(k, dim=-1)
    S = q.new_zeros(B, H, K, v.shape[-1])                                  # [B, H, K, V]
    outs = []
    for a in range(0, T, chunk_size):
        qc = scale * q[:, a:a + chunk_size].transpose(1, 2)                # [B, H, C, K]
        kc = k[:, a:a + chunk_size].transpose(1, 2)                        # [B, H, C, K]
        vc = v[:, a:a + chunk_size].transpose(1, 2)                        # [B, H, C, V]
        bc = beta[:, a:a + chunk_size].transpose(1, 2)[..., None]          # [B, H, C, 1]
        eye = torch.eye(qc.shape[2], dtype=q.dtype, device=q.device)      # [C, C]
        A = eye + (bc * kc @ kc.transpose(-1, -2)).tril(-1)                # [B, H, C, C]
        U = torch.linalg.solve_triangular(A, bc * (vc - kc @ S), upper=False)   # [B, H, C, V]
        outs.append(qc @ S + (qc @ kc.transpose(-1, -2)).tril() @ U)       # [B, H, C, V]
        S = S + kc.transpose(-1, -2) @ U
    return torch.cat(outs, 2).transpose(1, 2), S                           # [B, T, H, V]
