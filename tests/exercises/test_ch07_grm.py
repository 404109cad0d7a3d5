"""Grades chapter 7, GRM's causal gates (exercises/ch07_grm.py).

minimc is the oracle: the gates that minimc.memory_caching(..., variant="grm", pool="mean",
return_info=True) returns in info["gates"] ([B, T, H, N + 1], the last column for the online memory).
"""
import pytest
import torch

import minimc
from grading import check_close, check_true

CH = "ch07_grm"


def tokens(B=2, T=37, H=2, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, K, generator=g, dtype=torch.float64) for _ in range(3)]


def oracle_gates(u, k, C, temperature):
    q = torch.randn_like(k)                                                 # q and v do not change the gates
    _, info = minimc.memory_caching(q, k, q, u, memory="linear", variant="grm", segment_len=C,
                                    pool="mean", temperature=temperature, return_info=True)
    return info["gates"]


@pytest.mark.parametrize("T,C", [(37, 8), (16, 4), (9, 1), (6, 10), (12, 5)])
@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_causal_gates_match_minimc(impl, T, C, temperature):
    u, k, _ = tokens(T=T)
    got = impl(CH).causal_gates(u, k, C, temperature)
    check_close(got, oracle_gates(u, k, C, temperature), f"causal_gates (T={T}, segment_len={C}, "
                f"temperature={temperature})", atol=1e-10, rtol=1e-8)


def test_causal_gates_are_causal_and_sum_to_one(impl):
    u, k, _ = tokens(T=23)
    got = impl(CH).causal_gates(u, k, 4, 0.5)
    expected = oracle_gates(u, k, 4, 0.5)
    check_true(isinstance(got, torch.Tensor) and got.shape == expected.shape,
               f"causal_gates should return a tensor of shape {tuple(expected.shape)}")
    seg = torch.arange(23) // 4
    future = torch.arange(expected.shape[-1] - 1) >= seg[:, None]           # [T, N] segments not complete yet
    check_true(bool((got[..., :-1].transpose(1, 2)[:, :, future] == 0).all()),   # [B, H, T, N] masked
               "a gate on a segment that is not complete yet (i >= t // C) must be exactly 0")
    check_close(got.sum(-1), torch.ones_like(got[..., 0]), "causal_gates summed over the memories")
    check_close(got, expected, "causal_gates", atol=1e-10, rtol=1e-8)


def test_causal_gates_worked_example(impl):
    u = torch.ones(1, 3, 1, 1, dtype=torch.float64)
    k = torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64).view(1, 3, 1, 1)
    check_close(impl(CH).causal_gates(u, k, 2, 1.0), oracle_gates(u, k, 2, 1.0),
                "causal_gates on the worked example", atol=1e-10, rtol=1e-8)
