"""Grades chapter 7, GRM's causal gates (exercises/ch07_grm.py).

minimc is the oracle: the gates that minimc.memory_caching(..., variant="grm", pool="mean",
return_info=True) returns in info["gates"] ([B, T, H, N + 1], the last column for the online
memory). Inputs: random float64, T not a multiple of C, tokens in the middle of segments.
Expected values are computed before the learner's function runs.
"""
import pytest
import torch

import minimc
from grading import check_causal, check_close, check_true

CH = "ch07_grm"
AXES = ("B", "T", "H", "N")


def tokens(B=2, T=37, H=2, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, K, generator=g, dtype=torch.float64) for _ in range(3)]


def oracle_gates(u, k, C, temperature):
    q = torch.randn_like(k)                                      # q and v do not change the gates
    _, info = minimc.memory_caching(q, k, q, u, memory="linear", variant="grm", segment_len=C,
                                    pool="mean", temperature=temperature, return_info=True)
    return info["gates"]


def gate_hint(C, N):
    def hint(at):
        t, i = at["T"], at["N"]
        s = t // C
        column = "the online memory's column (N)" if i == N else f"cached segment i = {i}"
        if i == N or i < s:
            where = ("the first token of its segment: the online summary is k_t alone"
                     if t % C == 0 else f"token {t % C} of segment {s}: the online summary is the "
                     f"mean of keys {s * C}..{t}, not of the whole segment")
            return f"token t = {t}, {column}; {where}"
        return (f"token t = {t} lies in segment {s}: segment i = {i} is not complete yet, its gate "
                "must be exactly 0")
    return hint


@pytest.mark.parametrize("T,C", [(37, 8), (16, 4), (9, 1), (6, 10), (12, 5)])
@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_causal_gates_match_minimc(impl, T, C, temperature):
    u, k, _ = tokens(T=T)
    expected = oracle_gates(u, k, C, temperature)
    got = impl(CH).causal_gates(u, k, C, temperature)
    check_close(got, expected, f"causal_gates (T={T}, segment_len={C}, temperature={temperature})",
                atol=1e-10, rtol=1e-8, axes=AXES, hint=gate_hint(C, expected.shape[-1] - 1))


def test_causal_gates_are_causal_and_sum_to_one(impl):
    u, k, _ = tokens(T=23)
    expected = oracle_gates(u, k, 4, 0.5)
    got = impl(CH).causal_gates(u, k, 4, 0.5)
    check_true(isinstance(got, torch.Tensor) and got.shape == expected.shape,
               f"causal_gates should return a tensor of shape {tuple(expected.shape)}")
    seg = torch.arange(23) // 4
    future = torch.arange(expected.shape[-1] - 1) >= seg[:, None]           # [T, N] not complete
    check_true(bool((got[..., :-1].transpose(1, 2)[:, :, future] == 0).all()),   # [B, H, T, N]
               "a gate on a segment that is not complete yet (i >= t // C) must be exactly 0")
    check_close(got.sum(-1), torch.ones_like(got[..., 0]), "causal_gates summed over the memories")
    check_close(got, expected, "causal_gates", atol=1e-10, rtol=1e-8, axes=AXES,
                hint=gate_hint(4, expected.shape[-1] - 1))


@pytest.mark.parametrize("p", [9, 14])
def test_online_summary_is_causal(impl, p):
    """Changing the keys from token p on (p = 9: the 2nd token of segment 2; p = 14: the middle
    of segment 3) must not change any earlier token's gates."""
    u, k, _ = tokens(T=21, seed=3)
    expected = oracle_gates(u, k, 4, 1.0)
    k2 = k.clone()
    k2[:, p:] = 3 * torch.randn(k2[:, p:].shape, generator=torch.Generator().manual_seed(p),
                                dtype=k.dtype)
    before = impl(CH).causal_gates(u, k, 4, 1.0)
    after = impl(CH).causal_gates(u, k2, 4, 1.0)
    check_causal(before, after, p, "causal_gates", "the keys",
                 "your online summary uses keys after t: it is the running mean of the keys of "
                 "t's segment up to and including t")
    check_close(before, expected, "causal_gates", atol=1e-10, rtol=1e-8, axes=AXES,
                hint=gate_hint(4, expected.shape[-1] - 1))


def test_causal_gates_worked_example(impl):
    u = torch.ones(1, 4, 1, 1, dtype=torch.float64)
    k = torch.tensor([1.0, 3.0, 5.0, 7.0], dtype=torch.float64).view(1, 4, 1, 1)
    expected = oracle_gates(u, k, 2, 1.0)   # [0, 0, 1], [0, 0, 1], [.047, 0, .953], [.018, 0, .982]
    check_close(impl(CH).causal_gates(u, k, 2, 1.0), expected, "causal_gates on the worked example",
                atol=1e-10, rtol=1e-8, axes=AXES, hint=gate_hint(2, 2))
