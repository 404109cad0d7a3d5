"""Grades chapter 5, segments and the cache of states (exercises/ch05_memory_caching.py).

minimc is the oracle: minimc.segment_bounds, and the cached states that
minimc.memory_caching(..., return_info=True) returns (info["states"], leaves [B, H, N, ...]).
"""
import pytest
import torch

import minimc
from grading import check_close, check_true

CH = "ch05_memory_caching"


def as_pairs(bounds, what):
    """The learner's bounds as a list of (int, int), with a readable failure on the wrong type."""
    check_true(isinstance(bounds, (list, tuple)), f"{what} should be a list of (start, end) pairs, "
               f"got {type(bounds).__name__}")
    pairs = []
    for i, pair in enumerate(bounds):
        check_true(isinstance(pair, (list, tuple)) and len(pair) == 2,
                   f"{what}[{i}] should be a (start, end) pair, got {pair!r}")
        pairs.append(tuple(int(x) for x in pair))
    return pairs


# ---- part 1: segment_bounds -------------------------------------------------------------------------

@pytest.mark.parametrize("T,C", [(1, 1), (1, 4), (10, 4), (37, 8), (64, 8), (64, 64), (100, 7),
                                 (100, 100), (37, 500), (37, 1)])
def test_segment_bounds_constant(impl, T, C):
    got = impl(CH).segment_bounds(T, C, "constant")
    expected = minimc.segment_bounds(T, C, "constant")
    check_close(as_pairs(got, f"segment_bounds({T}, {C}, 'constant')"), expected,
                f"segment_bounds({T}, {C}, 'constant')")


@pytest.mark.parametrize("T", [1, 2, 37, 64, 100, 255, 1000])
def test_segment_bounds_log(impl, T):
    got = impl(CH).segment_bounds(T, 8, "log")                              # segment_len is ignored
    expected = minimc.segment_bounds(T, 8, "log")
    check_close(as_pairs(got, f"segment_bounds({T}, 8, 'log')"), expected, f"segment_bounds({T}, 8, 'log')")


def test_segment_bounds_default_is_constant(impl):
    got = impl(CH).segment_bounds(37, 8)
    check_close(as_pairs(got, "segment_bounds(37, 8)"), minimc.segment_bounds(37, 8), "segment_bounds(37, 8)")


def test_segment_bounds_rejects_unknown_segmentation(impl):
    with pytest.raises(ValueError):
        impl(CH).segment_bounds(37, 8, "linear")


# ---- part 2: cache_states ---------------------------------------------------------------------------

def tokens(B=2, T=37, H=3, K=4, V=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, D, generator=g, dtype=torch.float64) for D in (K, K, V)]


def oracle_states(q, k, v, C, mode):
    """minimc's cache: the stacked end-of-segment states of the linear memory, [B, H, N, K, V]."""
    _, info = minimc.memory_caching(q, k, v, memory="linear", variant="residual", segment_len=C,
                                    mode=mode, return_info=True)
    return info["states"][0]


@pytest.mark.parametrize("mode", ["checkpoint", "independent"])
@pytest.mark.parametrize("T,C", [(37, 8), (16, 4), (5, 16), (7, 1), (12, 12)])
def test_cache_states_match_minimc(impl, mode, T, C):
    q, k, v = tokens(T=T)
    got = impl(CH).cache_states(q, k, v, C, mode)
    check_close(got, oracle_states(q, k, v, C, mode), f"cache_states(..., segment_len={C}, mode={mode!r})",
                atol=1e-10, rtol=1e-10)


def test_cache_states_default_mode_is_checkpoint(impl):
    q, k, v = tokens(T=20)
    check_close(impl(CH).cache_states(q, k, v, 6), oracle_states(q, k, v, 6, "checkpoint"),
                "cache_states(..., segment_len=6)", atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mode", ["checkpoint", "independent"])
def test_cache_states_worked_example(impl, mode):
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1)  # [B, T, H, K] = [1, 3, 1, 1]
    got = impl(CH).cache_states(x, x, x, 2, mode)
    check_close(got, oracle_states(x, x, x, 2, mode), f"cache_states on the worked example ({mode})")
