"""Chapter 1 exercises: the linear memory, as a token loop and in chunkwise-parallel form,
without and with a per-token decay.

The linear memory (linear attention, Eq. 2) keeps one K x V matrix per (batch, head):

    S_t = S_{t-1} + k_t v_t^T,        y_t = S_t^T (scale * q_t),        S_0 = 0

Shapes (minimc's convention): q, k [B, T, H, K]; v [B, T, H, V]; o [B, T, H, V]; S [B, H, K, V].
``scale=None`` means K ** -0.5 (as in minimc.recurrent_memory). Every function returns
``(o, final_state)`` where final_state is S_T, a tensor [B, H, K, V] (not a tuple). A decayed
memory (Eq. 12, the gated family) multiplies the state by a_t in (0, 1] before each write.

Grade:  make grade CHAPTER=1      (or: python scripts/grade.py --chapter 1)
"""
import torch


def linear_attention_recurrent(q, k, v, scale=None):
    """The definition, one token at a time: for t = 0 .. T-1,

        S_t = S_{t-1} + k_t v_t^T            (an outer product per batch and head)
        o_t = S_t^T (scale * q_t)            (the update comes first: token t reads its own pair)

    q, k: [B, T, H, K]; v: [B, T, H, V]; scale: a number, None means K ** -0.5.
    Returns (o [B, T, H, V], S_T [B, H, K, V]), in q's dtype.
    Worked example: B = H = 1, K = V = 1, scale = 1, q = k = [1, 1], v = [2, 3]:
    S goes 2, 5 and o = [2, 5].
    """
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, v.shape[-1])                                  # [B, H, K, V]
    outs = []
    for t in range(T):
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])           # k_t v_t^T
        outs.append(torch.einsum("bhkv,bhk->bhv", S, scale * q[:, t]))     # S_t^T q_t, [B, H, V]
    return torch.stack(outs, 1), S                                         # [B, T, H, V]


def linear_attention_chunked(q, k, v, chunk_size=64, scale=None):
    """The chunkwise-parallel form: the same result, a matrix product per chunk instead of a
    Python step per token. Cut the sequence into chunks of ``chunk_size`` tokens (the last one may
    be shorter: T need not be a multiple). For a chunk with queries Q, keys K, values V (C rows)
    and the state S at its start:

        O       = Q S  +  ((Q K^T) * M) V         M[i, j] = 1 if j <= i else 0  (causal, C x C)
        S_next  = S + K^T V

    with Q already multiplied by scale. Same arguments and return value as
    ``linear_attention_recurrent``; chunk_size = 1 and chunk_size >= T must both work.
    Worked example: with chunk_size = 1 this is the token loop; with chunk_size >= T it is
    O = ((Q K^T) * M) V, "attention without the softmax".
    """
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, v.shape[-1])                                  # [B, H, K, V]
    outs = []
    for a in range(0, T, chunk_size):
        qc = scale * q[:, a:a + chunk_size].transpose(1, 2)                # [B, H, C, K]
        kc = k[:, a:a + chunk_size].transpose(1, 2)                        # [B, H, C, K]
        vc = v[:, a:a + chunk_size].transpose(1, 2)                        # [B, H, C, V]
        C = qc.shape[2]
        mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()  # [C, C] causal
        scores = (qc @ kc.transpose(-1, -2)).masked_fill(~mask, 0)         # [B, H, C, C]
        outs.append(qc @ S + scores @ vc)  # inter + intra, [B, H, C, V]
        S = S + kc.transpose(-1, -2) @ vc                                  # [B, H, K, V]
    return torch.cat(outs, 2).transpose(1, 2), S                           # [B, T, H, V]


def decayed_linear_attention_chunked(q, k, v, decay, chunk_size=64, scale=None):
    """The decayed (gated) linear memory of Eq. 12 in chunkwise-parallel form:

        S_t = a_t S_{t-1} + k_t v_t^T,        o_t = S_t^T (scale * q_t),        S_0 = 0

    decay a: [B, T, H], every a_t in (0, 1] (a_t = 1 everywhere is linear_attention_chunked).
    Inside a chunk of C tokens with queries Q (times scale), keys K, values V and the state S at
    its start, let g_i = log a_(first token) + ... + log a_(token i) be the cumulative log-decay
    from the chunk's first token to its token i, inclusive (g: [B, H, C], a cumsum of logs). Then

        O      = (Q * exp(g)) S  +  ((Q K^T) * L) V       L[i, j] = exp(g_i - g_j) if j <= i else 0
        S_next = exp(g_last) S  +  (K * exp(g_last - g))^T V

    the state decays by the whole chunk, and every key by what is left of the chunk after it
    (from its own token to the chunk's end). Differences of cumulative logs, never long products.
    q, k: [B, T, H, K]; v: [B, T, H, V]; chunk_size: C (T need not be a multiple; the last chunk
    may be shorter); scale: None means K ** -0.5. Returns (o [B, T, H, V], S_T [B, H, K, V]), in
    q's dtype.
    Worked example: B = H = K = V = 1, scale = 1, q = k = [1, 1], v = [2, 3], a = [0.5, 0.5]:
    S goes 2, then 0.5 * 2 + 3 = 4, so o = [2, 4], with chunk_size 1 or 2 alike.
    """
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, v.shape[-1])                                  # [B, H, K, V]
    log_a = decay.clamp_min(1e-30).log().transpose(1, 2)                   # [B, H, T]
    outs = []
    for a in range(0, T, chunk_size):
        qc = scale * q[:, a:a + chunk_size].transpose(1, 2)                # [B, H, C, K]
        kc = k[:, a:a + chunk_size].transpose(1, 2)                        # [B, H, C, K]
        vc = v[:, a:a + chunk_size].transpose(1, 2)                        # [B, H, C, V]
        g = log_a[:, :, a:a + chunk_size].cumsum(-1)                       # [B, H, C]
        C = qc.shape[2]
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        L = (g[..., :, None] - g[..., None, :]).masked_fill(~causal, float("-inf")).exp()
        scores = (qc @ kc.transpose(-1, -2)) * L                          # [B, H, C, C]
        outs.append((qc * g.exp()[..., None]) @ S + scores @ vc)           # inter + intra
        last = g[..., -1:]                                                 # [B, H, 1]
        S = last.exp()[..., None] * S + (kc * (last - g).exp()[..., None]).transpose(-1, -2) @ vc
    return torch.cat(outs, 2).transpose(1, 2), S                           # [B, T, H, V]
