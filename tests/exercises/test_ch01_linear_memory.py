"""Grades chapter 1, the linear memory (exercises/ch01_linear_memory.py).

minimc is the oracle: minimc.recurrent_memory(q, k, v, "linear", reference=True), the token loop of
Eq. 2 (S_t = S_{t-1} + k_t v_t^T, y_t = S_t^T scale q_t), on small float64 inputs with awkward sizes.
"""
import pytest
import torch
from torch.overrides import TorchFunctionMode

import minimc
from grading import check_close, check_true

CH = "ch01_linear_memory"


def inputs(B=2, T=7, H=3, K=5, V=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    return q, k, v


def oracle(q, k, v, scale=None):
    """(o [B, T, H, V], S [B, H, K, V]) from minimc's token loop."""
    o, (S,) = minimc.recurrent_memory(q, k, v, "linear", scale=scale, reference=True)
    return o, S


SIZES = [  # B, T, H, K, V, scale
    (2, 7, 3, 5, 4, None),        # scale None: K ** -0.5 with K = 5
    (1, 1, 1, 3, 2, 0.5),         # a single token
    (1, 63, 2, 8, 6, 1.0),        # K != V
]


# ---- part 1: the token loop ------------------------------------------------------------------------

@pytest.mark.parametrize("B,T,H,K,V,scale", SIZES)
def test_recurrent_matches_minimc(impl, B, T, H, K, V, scale):
    q, k, v = inputs(B, T, H, K, V)
    got = impl(CH).linear_attention_recurrent(q, k, v, scale=scale)
    check_true(isinstance(got, tuple) and len(got) == 2,
               "linear_attention_recurrent must return a pair (o, final_state)")
    expected = oracle(q, k, v, scale)
    check_close(got[0], expected[0], "output o")
    check_close(got[1], expected[1], "final state S_T")


def test_recurrent_worked_example(impl):
    one = torch.ones(1, 2, 1, 1, dtype=torch.float64)                    # q = k = [1, 1]
    v = torch.tensor([2.0, 3.0], dtype=torch.float64).view(1, 2, 1, 1)
    o, S = impl(CH).linear_attention_recurrent(one, one, v, scale=1.0)
    check_close(o, torch.tensor([2.0, 5.0], dtype=torch.float64).view(1, 2, 1, 1), "output o of the worked example")
    check_close(S, oracle(one, one, v, 1.0)[1], "final state of the worked example")


# ---- part 2: the chunkwise-parallel form ---------------------------------------------------------

@pytest.mark.parametrize("T,chunk_size", [(63, 16), (100, 32), (32, 16), (9, 1), (5, 64)])
def test_chunked_matches_minimc(impl, T, chunk_size):
    q, k, v = inputs(2, T, 2, 6, 5, seed=T)
    got = impl(CH).linear_attention_chunked(q, k, v, chunk_size=chunk_size)
    check_true(isinstance(got, tuple) and len(got) == 2,
               "linear_attention_chunked must return a pair (o, final_state)")
    expected = oracle(q, k, v)
    check_close(got[0], expected[0], f"output o (T = {T}, chunk_size = {chunk_size})")
    check_close(got[1], expected[1], f"final state S_T (T = {T}, chunk_size = {chunk_size})")


def test_chunked_scale(impl):
    q, k, v = inputs(1, 20, 1, 4, 4, seed=3)
    o, _ = impl(CH).linear_attention_chunked(q, k, v, chunk_size=8, scale=0.3)
    check_close(o, oracle(q, k, v, 0.3)[0], "output o with scale = 0.3")


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
    with _CountCalls() as counter:
        o, S = impl(CH).linear_attention_chunked(q, k, v, chunk_size=C)
    check_close(o, oracle(q, k, v)[0], "output o (T = 512, chunk_size = 128)")
    check_true(counter.n < T, f"linear_attention_chunked made {counter.n} torch calls for T = {T} tokens in "
               f"{T // C} chunks: that looks like a loop over tokens. Use matrix products per chunk: "
               "O = Q S + ((Q K^T) * M) V, S_next = S + K^T V")
