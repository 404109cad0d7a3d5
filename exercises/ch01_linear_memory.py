"""Chapter 1 exercises: the linear memory, as a token loop and in chunkwise-parallel form.

The linear memory (linear attention, Eq. 2) keeps one K x V matrix per (batch, head):

    S_t = S_{t-1} + k_t v_t^T,        y_t = S_t^T (scale * q_t),        S_0 = 0

Shapes (minimc's convention): q, k [B, T, H, K]; v [B, T, H, V]; o [B, T, H, V]; S [B, H, K, V].
``scale=None`` means K ** -0.5 (as in minimc.recurrent_memory). Both functions return
``(o, final_state)`` where final_state is S_T, a tensor [B, H, K, V] (not a tuple).

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
    raise NotImplementedError("linear_attention_recurrent")


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
    raise NotImplementedError("linear_attention_chunked")
