"""Grades chapter 1, the linear memory (exercises/ch01_linear_memory.py).

minimc is the oracle: minimc.recurrent_memory(q, k, v, "linear", reference=True), the token loop of
Eq. 2 (S_t = S_{t-1} + k_t v_t^T, y_t = S_t^T scale q_t), with ``decay=`` for Eq. 12's decayed
form; small float64 inputs with awkward sizes (K != V, T not a multiple of the chunk size).
Every expected value is computed before the learner's function runs (which gets clones anyway).
"""
import pytest
import torch
from torch.overrides import TorchFunctionMode

import minimc
from grading import check_causal, check_close, check_true

CH = "ch01_linear_memory"
O_AXES, S_AXES = ("B", "T", "H", "V"), ("B", "H", "K", "V")


def inputs(B=2, T=7, H=3, K=5, V=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    return q, k, v


def decays(B, T, H, seed=0, low=0.5):
    """a_t in [low, 1): strong enough that a missing or misplaced decay shows."""
    g = torch.Generator().manual_seed(seed + 100)
    return low + (1 - low) * torch.rand(B, T, H, generator=g, dtype=torch.float64)


def oracle(q, k, v, scale=None, decay=None):
    """(o [B, T, H, V], S [B, H, K, V]) from minimc's token loop."""
    opts = {} if decay is None else {"decay": decay}
    o, (S,) = minimc.recurrent_memory(q, k, v, "linear", scale=scale, reference=True, **opts)
    return o, S


def pair(got, name):
    check_true(isinstance(got, tuple) and len(got) == 2,
               f"{name} must return a pair (o, final_state), got {type(got).__name__}"
               + (f" of {len(got)}" if isinstance(got, (tuple, list)) else ""))
    return got


def chunk_hint(C, inter="is the inter-chunk term Q S missing, or S not carried to the next chunk?"):
    """Where the first wrong token sits in its chunk, and what that suggests."""
    def hint(at):
        t = at["T"]
        if t == 0:
            return "the very first token: check the scale and the readout S^T (scale q)"
        if t < C:
            return ("inside the first chunk (no state yet): the intra-chunk term ((Q K^T) * M) V: "
                    "the causal mask (j <= i, diagonal included) or the scale?")
        if t % C == 0:
            return f"the first token of chunk {t // C}: {inter}"
        return f"token {t % C} of chunk {t // C}, after correct ones"
    return hint


def changed_after(p, *tensors, seed=1):
    """Copies of the tensors with every token t >= p replaced by new random values."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for x in tensors:
        y = x.clone()
        y[:, p:] = 3 * torch.randn(y[:, p:].shape, generator=g, dtype=y.dtype)
        out.append(y)
    return out


SIZES = [  # B, T, H, K, V, scale
    (2, 7, 3, 5, 4, None),        # scale None: K ** -0.5 with K = 5
    (1, 1, 1, 3, 2, 0.5),         # a single token
    (1, 63, 2, 8, 6, 1.0),        # K != V
]


# ---- part 1: the token loop ----------------------------------------------------------------------

@pytest.mark.parametrize("B,T,H,K,V,scale", SIZES)
def test_recurrent_matches_minimc(impl, B, T, H, K, V, scale):
    q, k, v = inputs(B, T, H, K, V)
    expected = oracle(q, k, v, scale)
    got = pair(impl(CH).linear_attention_recurrent(q, k, v, scale=scale),
               "linear_attention_recurrent")
    check_close(got[0], expected[0], "output o", axes=O_AXES)
    check_close(got[1], expected[1], "final state S_T", axes=S_AXES)


def test_recurrent_worked_example(impl):
    one = torch.ones(1, 2, 1, 1, dtype=torch.float64)                    # q = k = [1, 1]
    v = torch.tensor([2.0, 3.0], dtype=torch.float64).view(1, 2, 1, 1)
    o_expected, S_expected = oracle(one, one, v, 1.0)                     # o = [2, 5], S = 5
    o, S = pair(impl(CH).linear_attention_recurrent(one, one, v, scale=1.0),
                "linear_attention_recurrent")
    check_close(o, o_expected, "output o of the worked example", axes=O_AXES)
    check_close(S, S_expected, "final state of the worked example", axes=S_AXES)


def test_recurrent_is_causal(impl):
    """Token t reads S_t (its own and earlier pairs), not the final state."""
    q, k, v = inputs(2, 12, 2, 4, 3, seed=4)
    expected = oracle(q, k, v)[0]
    k2, v2 = changed_after(5, k, v)
    before = pair(impl(CH).linear_attention_recurrent(q, k, v), "linear_attention_recurrent")[0]
    after = pair(impl(CH).linear_attention_recurrent(q, k2, v2), "linear_attention_recurrent")[0]
    check_causal(before, after, 5, "output o", "the keys and values",
                 "does token t read the final state S_T instead of S_t?")
    check_close(before, expected, "output o", axes=O_AXES)


# ---- part 2: the chunkwise-parallel form ---------------------------------------------------------

@pytest.mark.parametrize("T,chunk_size", [(63, 16), (100, 32), (32, 16), (9, 1), (5, 64)])
def test_chunked_matches_minimc(impl, T, chunk_size):
    q, k, v = inputs(2, T, 2, 6, 5, seed=T)
    expected = oracle(q, k, v)
    got = pair(impl(CH).linear_attention_chunked(q, k, v, chunk_size=chunk_size),
               "linear_attention_chunked")
    where = f"(T = {T}, chunk_size = {chunk_size})"
    check_close(got[0], expected[0], f"output o {where}", axes=O_AXES, hint=chunk_hint(chunk_size))
    check_close(got[1], expected[1], f"final state S_T {where}", axes=S_AXES)


def test_chunked_scale(impl):
    q, k, v = inputs(1, 20, 1, 4, 4, seed=3)
    expected = oracle(q, k, v, 0.3)[0]
    o, _ = pair(impl(CH).linear_attention_chunked(q, k, v, chunk_size=8, scale=0.3),
                "linear_attention_chunked")
    check_close(o, expected, "output o with scale = 0.3", axes=O_AXES, hint=chunk_hint(8))


def test_chunked_is_causal(impl):
    """A change at token 5 (the middle of chunk 0 of 8 tokens) must not reach tokens 0..4."""
    q, k, v = inputs(2, 19, 2, 4, 3, seed=6)
    expected = oracle(q, k, v)[0]
    k2, v2 = changed_after(5, k, v)
    before = pair(impl(CH).linear_attention_chunked(q, k, v, chunk_size=8),
                  "linear_attention_chunked")[0]
    after = pair(impl(CH).linear_attention_chunked(q, k2, v2, chunk_size=8),
                 "linear_attention_chunked")[0]
    check_causal(before, after, 5, "output o", "the keys and values",
                 "the intra-chunk scores need the causal mask M (j <= i) before the product with V")
    check_close(before, expected, "output o", axes=O_AXES, hint=chunk_hint(8))


class _CountCalls(TorchFunctionMode):
    """Counts torch calls (functions and tensor methods) made inside the block."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def test_chunked_works_per_chunk_not_per_token(impl):
    T, C = 512, 128
    q, k, v = inputs(1, T, 2, 8, 8, seed=5)
    expected = oracle(q, k, v)[0]
    with _CountCalls() as counter:
        o, S = pair(impl(CH).linear_attention_chunked(q, k, v, chunk_size=C),
                    "linear_attention_chunked")
    check_close(o, expected, "output o (T = 512, chunk_size = 128)", axes=O_AXES,
                hint=chunk_hint(C))
    check_true(counter.n < T, f"linear_attention_chunked made {counter.n} torch calls for T = "
               f"{T} tokens in {T // C} chunks: that looks like a loop over tokens. Use matrix "
               "products "
               "per chunk: O = Q S + ((Q K^T) * M) V, S_next = S + K^T V")


# ---- part 3: the decayed memory, chunkwise -------------------------------------------------------

DECAY_INTER = ("is the inter-chunk term (Q * exp(g)) S missing, or the state not decayed by the "
               "whole chunk, exp(g_last) S?")


def decay_state_hint(at):
    return ("the outputs are right, the final state is not: each key is decayed to the END of its "
            "chunk, K * exp(g_last - g), and the old state by exp(g_last)")


@pytest.mark.parametrize("T,chunk_size", [(37, 8), (64, 16), (10, 1), (6, 64), (23, 23)])
def test_decayed_chunked_matches_minimc(impl, T, chunk_size):
    q, k, v = inputs(2, T, 2, 5, 3, seed=40 + T)
    a = decays(2, T, 2, seed=T)
    expected = oracle(q, k, v, decay=a)
    got = pair(impl(CH).decayed_linear_attention_chunked(q, k, v, a, chunk_size=chunk_size),
               "decayed_linear_attention_chunked")
    where = f"(T = {T}, chunk_size = {chunk_size})"
    check_close(got[0], expected[0], f"output o {where}", axes=O_AXES,
                hint=chunk_hint(chunk_size, DECAY_INTER))
    check_close(got[1], expected[1], f"final state S_T {where}", axes=S_AXES,
                hint=decay_state_hint)


def test_decayed_chunked_scale_and_strong_decay(impl):
    """Decays down to 0.05: a product of many a's underflows where a sum of logs does not."""
    q, k, v = inputs(1, 40, 2, 4, 6, seed=8)
    a = decays(1, 40, 2, seed=9, low=0.05)
    expected = oracle(q, k, v, scale=0.7, decay=a)
    got = pair(impl(CH).decayed_linear_attention_chunked(q, k, v, a, chunk_size=16, scale=0.7),
               "decayed_linear_attention_chunked")
    check_close(got[0], expected[0], "output o (scale = 0.7)", axes=O_AXES,
                hint=chunk_hint(16, DECAY_INTER))
    check_close(got[1], expected[1], "final state S_T", axes=S_AXES, hint=decay_state_hint)


def test_decayed_chunked_worked_example(impl):
    one = torch.ones(1, 2, 1, 1, dtype=torch.float64)
    v = torch.tensor([2.0, 3.0], dtype=torch.float64).view(1, 2, 1, 1)
    a = torch.full((1, 2, 1), 0.5, dtype=torch.float64)
    expected = oracle(one, one, v, 1.0, decay=a)                          # o = [2, 4], S = 4
    for C in (1, 2):
        got = pair(impl(CH).decayed_linear_attention_chunked(one, one, v, a, chunk_size=C,
                                                             scale=1.0),
                   "decayed_linear_attention_chunked")
        check_close(got, expected, f"the worked example with chunk_size = {C}:",
                    parts=("o", "S_T"), axes=(O_AXES, S_AXES))


def test_decayed_chunked_is_causal(impl):
    q, k, v = inputs(2, 21, 2, 4, 3, seed=12)
    a = decays(2, 21, 2, seed=13)
    expected = oracle(q, k, v, decay=a)[0]
    k2, v2, a2 = changed_after(11, k, v, a)
    a2 = a2.abs().clamp(0.5, 1.0)                                          # still decays
    before = pair(impl(CH).decayed_linear_attention_chunked(q, k, v, a, chunk_size=8),
                  "decayed_linear_attention_chunked")[0]
    after = pair(impl(CH).decayed_linear_attention_chunked(q, k2, v2, a2, chunk_size=8),
                 "decayed_linear_attention_chunked")[0]
    check_causal(before, after, 11, "output o", "the keys, values and decays",
                 "L[i, j] must be 0 for j > i (mask before exp, or exp(-inf) = 0)")
    check_close(before, expected, "output o", axes=O_AXES, hint=chunk_hint(8, DECAY_INTER))
