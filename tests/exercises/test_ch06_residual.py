"""Grades chapter 6, Residual Memory's readout (exercises/ch06_residual.py).

minimc is the oracle: minimc.memory_caching(..., variant="residual") on a linear memory. The test
feeds the learner the pieces minimc computes: the online readouts (minimc.recurrent_memory over the
whole sequence in checkpoint mode, over each segment alone in independent mode) and the cached
states (memory_caching's info["states"]).
"""
import pytest
import torch

import minimc
from grading import check_close

CH = "ch06_residual"


def tokens(B=2, T=37, H=2, K=4, V=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, D, generator=g, dtype=torch.float64) for D in (K, K, V)]


def pieces(q, k, v, C, mode):
    """(online readouts [B, T, H, V], cached states [B, H, N, K, V], scaled q, minimc's residual output)."""
    expected, info = minimc.memory_caching(q, k, v, memory="linear", variant="residual", segment_len=C,
                                           mode=mode, return_info=True)
    if mode == "checkpoint":                                                # one continuing memory
        online, _ = minimc.recurrent_memory(q, k, v, "linear")
    else:                                                                   # each segment from zero
        online = torch.cat([minimc.recurrent_memory(q[:, a:b], k[:, a:b], v[:, a:b], "linear")[0]
                            for a, b in info["bounds"]], 1)
    return online, info["states"][0], q * q.shape[-1] ** -0.5, expected


@pytest.mark.parametrize("mode", ["checkpoint", "independent"])
@pytest.mark.parametrize("T,C", [(37, 8), (16, 4), (9, 1), (6, 10)])
def test_residual_readout_matches_minimc(impl, mode, T, C):
    q, k, v = tokens(T=T)
    online, states, qs, expected = pieces(q, k, v, C, mode)
    got = impl(CH).residual_readout(online, states, qs, C)
    check_close(got, expected, f"residual_readout (T={T}, segment_len={C}, {mode})", atol=1e-10, rtol=1e-10)


def test_residual_readout_first_segment_is_online(impl):
    q, k, v = tokens(T=20)
    online, states, qs, expected = pieces(q, k, v, 8, "checkpoint")
    got = impl(CH).residual_readout(online, states, qs, 8)
    check_close(got[:, :8], expected[:, :8], "residual_readout in segment 0 (it reads no cached state)",
                atol=1e-10, rtol=1e-10)


def test_residual_readout_worked_example(impl):
    q, k, v = tokens(B=1, T=3, H=1, K=2, V=2, seed=3)
    online, states, qs, expected = pieces(q, k, v, 2, "independent")
    check_close(impl(CH).residual_readout(online, states, qs, 2), expected, "residual_readout on the worked example",
                atol=1e-10, rtol=1e-10)
