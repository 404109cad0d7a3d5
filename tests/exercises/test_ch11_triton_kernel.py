"""Grades chapter 11, the readout kernels (exercises/ch11_triton_kernel.py).

minimc is the oracle: minimc.readout.cached_readout_reference (the cached part of Eq. 9 / 17), on
one (batch, head); its autograd gradient for the dq kernel. The Triton parts run in Triton's
interpreter when no GPU is present (conftest.py), at tiny sizes: one program per block (or per
token), K, V of 16 or 32. Kernel outputs are float32 (GPUs may use TF32): compared at 5e-3.
States that no token reads are filled with NaN, so a kernel that loads them shows it.
"""
import pytest
import torch

import minimc.kernel  # noqa: F401  (sets TRITON_INTERPRET=1 without a GPU)
from grading import check_close, check_true
from minimc import readout

CH = "ch11_triton_kernel"
KERNEL_LIMIT = 30                                                # seconds: the interpreter is slow
O_AXES, DQ_AXES = ("T", "V"), ("T", "K")
F32 = dict(atol=5e-3, rtol=5e-3, dtype=False)                    # the launchers return float32


def block(T=16, K=16, V=16, N=4, dtype=torch.float64, seed=0):
    """q [T, K], states [N, K, V], gates [T, N]: state 1 is read by nobody, state 2 by some."""
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
    return readout.cached_readout_reference(q[None, :, None], S[None, None],
                                            gates[None, :, None])[0, :, 0]


def poisoned(S, unread):
    """S with NaN in the states no token reads."""
    S = S.clone()
    S[unread] = float("nan")
    return S


def readout_hint(at):
    return (f"token t = {at['T']}: o_t = sum_i g_ti S_i^T q_t over the states with a nonzero gate "
            "in this block")


# ---- part 1: readout_block (torch) ---------------------------------------------------------------

@pytest.mark.parametrize("T,K,V,N", [(16, 8, 12, 5), (1, 4, 4, 1), (7, 16, 3, 3)])
def test_readout_block_matches_minimc(impl, T, K, V, N):
    q, S, g = block(T, K, V, N)
    expected = oracle(q, S, g)
    check_close(impl(CH).readout_block(q, S, g), expected, "readout_block output", axes=O_AXES,
                hint=readout_hint)


def test_readout_block_skips_unread_states(impl):
    q, S, g = block(16, 8, 12, 5)
    expected = oracle(q, S, g)
    got = impl(CH).readout_block(q, poisoned(S, 1), g)                  # gates[:, 1] are all zero
    check_true(isinstance(got, torch.Tensor) and bool(torch.isfinite(got).all()),
               "readout_block read state 1, whose gates are all zero (a NaN there reached the "
               "output): skip a state when its whole gate column is zero")
    check_close(got, expected, "readout_block output", axes=O_AXES, hint=readout_hint)


def test_readout_block_zero_gates(impl):
    q, S, g = block(5, 4, 6, 3)
    zero = torch.zeros_like(g)
    expected = oracle(q, S, zero)
    got = impl(CH).readout_block(q, poisoned(S, slice(None)), zero)     # nobody reads anything
    check_close(got, expected, "readout_block output with all gates zero", axes=O_AXES)


# ---- part 2: readout_block_kernel (Triton) -------------------------------------------------------

@pytest.mark.parametrize("T,K,V,N", [(16, 16, 16, 4), (11, 32, 16, 3), (1, 16, 32, 1)])
def test_kernel_matches_minimc(impl, T, K, V, N):
    q, S, g = block(T, K, V, N, dtype=torch.float32)
    expected = oracle(q, S, g)
    got = impl(CH, limit=KERNEL_LIMIT).readout_block_triton(q, S, g)   # NaN-filled before launch
    check_true(bool(torch.isfinite(got).all()),
               "the kernel left rows unwritten (NaN): store every row t < T")
    check_close(got, expected, "kernel output", axes=O_AXES, hint=readout_hint, **F32)


def test_kernel_skips_unread_states(impl):
    q, S, g = block(16, 16, 16, 4, dtype=torch.float32)
    expected = oracle(q, S, g)
    got = impl(CH, limit=KERNEL_LIMIT).readout_block_triton(q, poisoned(S, 1), g)
    check_true(bool(torch.isfinite(got).all()),
               "the kernel loaded state 1, whose gates are all zero (a NaN there reached the "
               "output): skip a state when tl.max(tl.abs(b_g), axis=0) == 0")
    check_close(got, expected, "kernel output", axes=O_AXES, hint=readout_hint, **F32)


# ---- part 3: sparse_readout_kernel (SSC, Eq. 17) -------------------------------------------------

def ssc_case(T=8, K=16, V=16, N=6, top_k=2, seed=0):
    """q [T, K], states [N, K, V], SSC gates and selected [T, k] as minimc's router makes them
    (token t may read segments i < t // 2; the first tokens have empty slots, -1)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(T, K, generator=g)
    S = torch.randn(N, K, V, generator=g) / K ** 0.5
    scores, online = torch.randn(T, N, generator=g), torch.randn(T, generator=g)
    valid = (torch.arange(T) // 2)[:, None] > torch.arange(N)                # [T, N]
    gates, selected = minimc.gate(scores, online, valid, "ssc", top_k)       # [T, N + 1], [T, k]
    slot_gates = gates.gather(-1, selected.clamp_min(0))                    # [T, k] (junk at -1)
    return q, S, gates[:, :N], slot_gates, selected


def sparse_hint(selected):
    def hint(at):
        t = at["T"]
        return (f"token t = {t} selected states {selected[t].tolist()} (-1: empty slot): "
                "o_t = sum over its non-empty slots j of gates[t, j] S[selected[t, j]]^T q_t")
    return hint


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_sparse_kernel_matches_minimc(impl, top_k):
    q, S, dense_gates, slot_gates, selected = ssc_case(top_k=top_k)
    expected = oracle(q, S, dense_gates)  # every state, zeros skipped
    got = impl(CH, limit=KERNEL_LIMIT).sparse_readout_triton(q, S, slot_gates, selected)
    check_true(bool(torch.isfinite(got).all()), "sparse_readout_kernel left a NaN: store o[t] "
               "for every token t (program_id), and never read a state through slot index -1")
    check_close(got, expected, f"sparse kernel output (top_k = {top_k})", axes=O_AXES,
                hint=sparse_hint(selected), **F32)


def test_sparse_kernel_loads_only_selected_states(impl):
    q, S, dense_gates, slot_gates, selected = ssc_case(T=8, N=6, top_k=2, seed=1)
    expected = oracle(q, S, dense_gates)
    unread = torch.ones(6, dtype=torch.bool)
    unread[selected[selected >= 0]] = False
    check_true(bool(unread.any()), "test set-up: some state must be unselected")   # states 3..5
    got = impl(CH, limit=KERNEL_LIMIT).sparse_readout_triton(q, poisoned(S, unread), slot_gates,
                                                             selected)
    check_true(bool(torch.isfinite(got).all()),
               f"sparse_readout_kernel loaded a state no token selected (states "
               f"{unread.nonzero()[:, 0].tolist()} hold NaN): load S[i] only for the selected i")
    check_close(got, expected, "sparse kernel output", axes=O_AXES, hint=sparse_hint(selected),
                **F32)


def test_sparse_kernel_worked_example(impl):
    """The docstring's example: selected [3, -1], gates [0.25, 0.75] -> 0.25 S[3]^T q."""
    q, S, *_ = ssc_case(T=1, N=4, seed=2)
    selected = torch.tensor([[3, -1]])
    slot_gates = torch.tensor([[0.25, 0.75]])
    dense = torch.zeros(1, 4)
    dense[0, 3] = 0.25
    expected = oracle(q, S, dense)
    got = impl(CH, limit=KERNEL_LIMIT).sparse_readout_triton(q, poisoned(S, slice(0, 3)),
                                                             slot_gates, selected)
    check_close(got, expected, "sparse kernel output on the worked example", axes=O_AXES,
                hint=lambda at: "an empty slot (-1) adds nothing, whatever its gate", **F32)


# ---- part 4: readout_dq_kernel (the gradient with respect to q) ----------------------------------

def oracle_dq(do, S, gates):
    """dq = d<o, do>/dq through minimc's readout (float64): [T, K]."""
    q = torch.zeros(do.shape[0], S.shape[1], dtype=torch.float64, requires_grad=True)
    o = oracle(q, S, gates)                                                 # [T, V]
    return torch.autograd.grad(o, q, do.double())[0]


def dq_hint(at):
    return (f"token t = {at['T']}: dq_t = sum_i g_ti S_i do_t, i.e. do @ S_i^T: the state is "
            "read transposed, [V, K]")


@pytest.mark.parametrize("T,K,V,N", [(16, 16, 32, 4), (9, 32, 16, 3), (1, 16, 16, 1)])
def test_dq_kernel_matches_autograd(impl, T, K, V, N):
    q, S, g = block(T, K, V, N, dtype=torch.float32, seed=3)
    do = torch.randn(T, V, generator=torch.Generator().manual_seed(4))
    expected = oracle_dq(do, S, g)
    got = impl(CH, limit=KERNEL_LIMIT).readout_dq_triton(do, S, g)
    check_true(bool(torch.isfinite(got).all()),
               "readout_dq_kernel left rows unwritten (NaN): store every row t < T")
    check_close(got, expected, f"dq (T = {T}, K = {K}, V = {V})", axes=DQ_AXES, hint=dq_hint,
                **F32)


def test_dq_kernel_skips_unread_states(impl):
    q, S, g = block(16, 16, 16, 4, dtype=torch.float32, seed=5)
    do = torch.randn(16, 16, generator=torch.Generator().manual_seed(6))
    expected = oracle_dq(do, S, g)
    got = impl(CH, limit=KERNEL_LIMIT).readout_dq_triton(do, poisoned(S, 1), g)
    check_true(bool(torch.isfinite(got).all()),
               "readout_dq_kernel loaded state 1, whose gates are all zero (NaN reached dq): "
               "skip a state whose whole gate column is zero")
    check_close(got, expected, "dq", axes=DQ_AXES, hint=dq_hint, **F32)
