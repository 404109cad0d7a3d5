"""Grades chapter 2, better fixed-size memories (exercises/ch02_fixed_memories.py).

minimc is the oracle: minimc.memories.DeltaMemory.step and SWLAMemory.step for one token, and
minimc.recurrent_memory(..., reference=True) for a whole sequence of steps; float64 inputs.
"""
import pytest
import torch

import minimc
from grading import check_close, check_true
from minimc.memories import DeltaMemory, SWLAMemory

CH = "ch02_fixed_memories"


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def unit_interval(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- delta rule ----------------------------------------------------------------------------------

@pytest.mark.parametrize("B,H,K,V", [(2, 3, 5, 4), (1, 1, 1, 1), (1, 2, 8, 3)])
def test_delta_rule_step_matches_minimc(impl, B, H, K, V):
    S, k, v = rand(B, H, K, V, seed=1), 3 * rand(B, H, K, seed=2), rand(B, H, V, seed=3)
    beta = unit_interval(B, H, seed=4)
    got = impl(CH).delta_rule_step(S, k, v, beta)
    check_close(got, DeltaMemory().step((S,), k, v, beta=beta)[0], "S_new")


def test_delta_rule_normalises_keys(impl):
    S, v, beta = rand(1, 2, 4, 3, seed=5), rand(1, 2, 3, seed=6), unit_interval(1, 2, seed=7)
    k = rand(1, 2, 4, seed=8)
    k = 10 * k / k.norm(dim=-1, keepdim=True)                              # keys of length 10
    got = impl(CH).delta_rule_step(S, k, v, beta)
    expected = DeltaMemory().step((S,), k, v, beta=beta)[0]
    check_true(isinstance(got, torch.Tensor) and got.shape == expected.shape
               and torch.allclose(got, expected, atol=1e-5, rtol=1e-4),
               "delta_rule_step with keys of length 10 does not match minimc: normalise k to unit "
               "length first (F.normalize(k, dim=-1)), as minimc's DeltaMemory does")


def test_delta_rule_beta_zero_stores_nothing(impl):
    S, k, v = rand(2, 2, 4, 5, seed=9), rand(2, 2, 4, seed=10), rand(2, 2, 5, seed=11)
    check_close(impl(CH).delta_rule_step(S, k, v, torch.zeros(2, 2, dtype=torch.float64)), S,
                "S_new with beta = 0 (should be S itself)")


def test_delta_rule_worked_example(impl):
    S = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    k, v = torch.full((1, 1, 1), 2.0, dtype=torch.float64), torch.full((1, 1, 1), 3.0, dtype=torch.float64)
    got = impl(CH).delta_rule_step(S, k, v, torch.full((1, 1), 0.5, dtype=torch.float64))
    check_close(got, torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64), "S_new of the worked example")


def test_delta_rule_sequence_matches_recurrent_memory(impl):
    B, T, H, K, V = 2, 13, 2, 6, 5
    q, k, v = rand(B, T, H, K, seed=12), rand(B, T, H, K, seed=13), rand(B, T, H, V, seed=14)
    beta = unit_interval(B, T, H, seed=15)
    S = torch.zeros(B, H, K, V, dtype=torch.float64)
    for t in range(T):
        S = impl(CH).delta_rule_step(S, k[:, t], v[:, t], beta[:, t])
    _, (expected,) = minimc.recurrent_memory(q, k, v, "delta", beta=beta, reference=True)
    check_close(S, expected, f"the state after {T} delta_rule_step calls")


# ---- SWLA ----------------------------------------------------------------------------------------

def swla_inputs(B=2, H=3, K=5, V=4, seed=20):
    state = (rand(B, H, K, V, seed=seed), rand(B, H, K, seed=seed + 1), rand(B, H, V, seed=seed + 2))
    k, v = rand(B, H, K, seed=seed + 3), rand(B, H, V, seed=seed + 4)
    a, b, c = (unit_interval(B, H, seed=seed + 5 + i) for i in range(3))
    return state, k, v, a, b, c


@pytest.mark.parametrize("B,H,K,V", [(2, 3, 5, 4), (1, 1, 1, 1), (1, 2, 3, 7)])
def test_swla_step_matches_minimc(impl, B, H, K, V):
    state, k, v, a, b, c = swla_inputs(B, H, K, V)
    got = impl(CH).swla_step(state, k, v, a, b, c)
    check_close(got, SWLAMemory().step(state, k, v, a=a, b=b, c=c), "new state (S_t, k_t, v_t)")


def test_swla_worked_example(impl):
    t = lambda x, *s: torch.tensor(x, dtype=torch.float64).view(*s)       # noqa: E731
    state = (t(1.0, 1, 1, 1, 1), t(1.0, 1, 1, 1), t(2.0, 1, 1, 1))
    got = impl(CH).swla_step(state, t(1.0, 1, 1, 1), t(3.0, 1, 1, 1), t(0.5, 1, 1), t(1.0, 1, 1), t(2.0, 1, 1))
    check_close(got, (t(8.5, 1, 1, 1, 1), t(1.0, 1, 1, 1), t(3.0, 1, 1, 1)), "new state of the worked example")


def test_swla_sequence_matches_recurrent_memory(impl):
    B, T, H, K, V = 2, 11, 2, 4, 3
    q, k, v = rand(B, T, H, K, seed=30), rand(B, T, H, K, seed=31), rand(B, T, H, V, seed=32)
    a, b, c = (unit_interval(B, T, H, seed=33 + i) for i in range(3))
    state = (torch.zeros(B, H, K, V, dtype=torch.float64), torch.zeros(B, H, K, dtype=torch.float64),
             torch.zeros(B, H, V, dtype=torch.float64))
    for t in range(T):
        state = impl(CH).swla_step(state, k[:, t], v[:, t], a[:, t], b[:, t], c[:, t])
    _, expected = minimc.recurrent_memory(q, k, v, "swla", a=a, b=b, c=c, reference=True)
    check_close(state, expected, f"the state after {T} swla_step calls")
