"""Grades chapter 11, the kernel's inner loop (exercises/ch11_triton_kernel.py).

minimc is the oracle: minimc.readout.cached_readout_reference, the cached part of Eq. 9 / 17, on one
(batch, head). The Triton part runs in Triton's interpreter when no GPU is present (conftest.py).
"""
import pytest
import torch

from grading import check_close, check_true
import minimc.kernel  # noqa: F401  (sets TRITON_INTERPRET=1 without a GPU)
from minimc.readout import cached_readout_reference

CH = "ch11_triton_kernel"


def block(T=16, K=16, V=16, N=4, dtype=torch.float64, seed=0):
    """q [T, K], states [N, K, V], gates [T, N]: state 1 is read by nobody, state 2 by some tokens."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(T, K, generator=g, dtype=dtype)
    S = torch.randn(N, K, V, generator=g, dtype=dtype) / K ** 0.5
    gates = torch.rand(T, N, generator=g, dtype=dtype)
    if N > 2:
        gates[:, 1] = 0
        gates[::3, 2] = 0
    return q, S, gates


def oracle(q, S, gates):
    """minimc's readout on one block: [T, K], [N, K, V], [T, N] -> [T, V] (float64)."""
    q, S, gates = (x.double() for x in (q, S, gates))
    return cached_readout_reference(q[None, :, None], S[None, None], gates[None, :, None])[0, :, 0]


# ---- part 1: readout_block (torch) -----------------------------------------------------------------

@pytest.mark.parametrize("T,K,V,N", [(16, 8, 12, 5), (1, 4, 4, 1), (7, 16, 3, 3)])
def test_readout_block_matches_minimc(impl, T, K, V, N):
    q, S, g = block(T, K, V, N)
    check_close(impl(CH).readout_block(q, S, g), oracle(q, S, g), "readout_block output")


def test_readout_block_skips_unread_states(impl):
    q, S, g = block(16, 8, 12, 5)
    poisoned = S.clone()
    poisoned[1] = float("nan")                                              # gates[:, 1] are all zero
    got = impl(CH).readout_block(q, poisoned, g)
    check_true(isinstance(got, torch.Tensor) and torch.isfinite(got).all(),
               "readout_block read state 1, whose gates are all zero (a NaN there reached the output): "
               "skip a state when its whole gate column is zero")
    check_close(got, oracle(q, S, g), "readout_block output")


def test_readout_block_zero_gates(impl):
    q, S, g = block(5, 4, 6, 3)
    check_close(impl(CH).readout_block(q, S, torch.zeros_like(g)), torch.zeros(5, 6, dtype=q.dtype),
                "readout_block output with all gates zero")


# ---- part 2: readout_block_kernel (Triton) ---------------------------------------------------------

@pytest.mark.parametrize("T,K,V,N", [(16, 16, 16, 4), (11, 32, 16, 3), (1, 16, 32, 1)])
def test_kernel_matches_minimc(impl, T, K, V, N):
    q, S, g = block(T, K, V, N, dtype=torch.float32)
    got = impl(CH).readout_block_triton(q, S, g)                            # NaN-filled before the launch
    check_true(torch.isfinite(got).all(), "the kernel left rows unwritten (NaN): store every row t < T")
    check_close(got, oracle(q, S, g), "kernel output", atol=5e-3, rtol=5e-3)   # GPUs may use TF32


def test_kernel_skips_unread_states(impl):
    q, S, g = block(16, 16, 16, 4, dtype=torch.float32)
    poisoned = S.clone()
    poisoned[1] = float("nan")                                              # gates[:, 1] are all zero
    got = impl(CH).readout_block_triton(q, poisoned, g)
    check_true(torch.isfinite(got).all(),
               "the kernel loaded state 1, whose gates are all zero (a NaN there reached the output): "
               "skip a state when tl.max(tl.abs(b_g), axis=0) == 0")
    check_close(got, oracle(q, S, g), "kernel output", atol=5e-3, rtol=5e-3)
