"""Grades chapter 5, segments and the cache of states (exercises/ch05_memory_caching.py).

minimc is the oracle: minimc.segment_bounds, the gates of minimc.memory_caching(...,
variant="residual", return_info=True) (nonzero exactly where a token may read a cached state) and
the cached states it returns (info["states"], leaves [B, H, N, ...]). Expected values are
computed before the learner's function runs.
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


# ---- part 1: segment_bounds ----------------------------------------------------------------------

@pytest.mark.parametrize("T,C", [(1, 1), (1, 4), (10, 4), (37, 8), (64, 8), (64, 64), (100, 7),
                                 (100, 100), (37, 500), (37, 1)])
def test_segment_bounds_constant(impl, T, C):
    expected = minimc.segment_bounds(T, C, "constant")
    got = impl(CH).segment_bounds(T, C, "constant")
    check_close(as_pairs(got, f"segment_bounds({T}, {C}, 'constant')"), expected,
                f"segment_bounds({T}, {C}, 'constant')")


@pytest.mark.parametrize("T", [1, 2, 37, 64, 100, 255, 1000])
def test_segment_bounds_log(impl, T):
    expected = minimc.segment_bounds(T, 8, "log")
    got = impl(CH).segment_bounds(T, 8, "log")                              # segment_len is ignored
    what = f"segment_bounds({T}, 8, 'log')"
    check_close(as_pairs(got, what), expected, what)


def test_segment_bounds_default_is_constant(impl):
    expected = minimc.segment_bounds(37, 8)
    got = impl(CH).segment_bounds(37, 8)
    check_close(as_pairs(got, "segment_bounds(37, 8)"), expected, "segment_bounds(37, 8)")


def test_segment_bounds_rejects_unknown_segmentation(impl):
    with pytest.raises(ValueError):
        impl(CH).segment_bounds(37, 8, "linear")


# ---- part 2: readable_segments -------------------------------------------------------------------

def oracle_readable(T, C, segmentation):
    """[T, N] bool from minimc: Residual Memory's gate on cached state i is 1 where t reads it."""
    x = torch.randn(1, T, 1, 2, generator=torch.Generator().manual_seed(T), dtype=torch.float64)
    _, info = minimc.memory_caching(x, x, x, memory="linear", variant="residual", segment_len=C,
                                    segmentation=segmentation, return_info=True)
    N = len(info["bounds"])
    return info["gates"][0, :, 0, :N] != 0, info["bounds"]


def readable_hint(bounds):
    def hint(at):
        t, i = at["T"], at["N"]
        s = next(n for n, (a, b) in enumerate(bounds) if a <= t < b)
        a, b = bounds[s]
        return (f"token t = {t} lies in segment {s} = [{a}, {b}), so it reads the cached states "
                f"i < {s}; the first wrong entry is state i = {i}")
    return hint


@pytest.mark.parametrize("T,C,segmentation", [(10, 4, "constant"), (37, 8, "constant"),
                                              (5, 16, "constant"), (7, 1, "constant"),
                                              (37, 8, "log"), (100, 8, "log"), (64, 8, "log"),
                                              (1, 8, "log")])
def test_readable_segments_match_minimc(impl, T, C, segmentation):
    expected, bounds = oracle_readable(T, C, segmentation)
    got = impl(CH).readable_segments(T, C, segmentation)
    what = f"readable_segments({T}, {C}, {segmentation!r})"
    check_true(isinstance(got, torch.Tensor) and got.dtype == torch.bool,
               f"{what} should be a bool tensor [T, N], got "
               f"{got.dtype if isinstance(got, torch.Tensor) else type(got).__name__}")
    check_close(got, expected, what, axes=("T", "N"), hint=readable_hint(bounds))


def test_readable_segments_default_is_constant(impl):
    expected, bounds = oracle_readable(20, 6, "constant")
    got = impl(CH).readable_segments(20, 6)
    check_close(got, expected, "readable_segments(20, 6)", axes=("T", "N"),
                hint=readable_hint(bounds))


# ---- part 3: cache_states ------------------------------------------------------------------------

def tokens(B=2, T=37, H=3, K=4, V=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, D, generator=g, dtype=torch.float64) for D in (K, K, V)]


STATE_AXES = ("B", "H", "N", "K", "V")


def state_hint(T, C, mode):
    def hint(at):
        i = at["N"]
        a, b = i * C, min(i * C + C, T)
        if mode == "checkpoint":
            return (f"cached state i = {i} is the memory after tokens 0..{b - 1} (checkpoint: "
                    f"one continuing memory, never reset)")
        return (f"cached state i = {i} holds tokens {a}..{b - 1} only (independent: each segment "
                f"starts from zero)")
    return hint


def oracle_states(q, k, v, C, mode):
    """minimc's cache: the stacked end-of-segment states of the linear memory, [B, H, N, K, V]."""
    _, info = minimc.memory_caching(q, k, v, memory="linear", variant="residual", segment_len=C,
                                    mode=mode, return_info=True)
    return info["states"][0]


@pytest.mark.parametrize("mode", ["checkpoint", "independent"])
@pytest.mark.parametrize("T,C", [(37, 8), (16, 4), (5, 16), (7, 1), (12, 12)])
def test_cache_states_match_minimc(impl, mode, T, C):
    q, k, v = tokens(T=T)
    expected = oracle_states(q, k, v, C, mode)
    got = impl(CH).cache_states(q, k, v, C, mode)
    check_close(got, expected, f"cache_states(..., segment_len={C}, mode={mode!r})",
                atol=1e-10, rtol=1e-10, axes=STATE_AXES, hint=state_hint(T, C, mode))


def test_cache_states_default_mode_is_checkpoint(impl):
    q, k, v = tokens(T=20)
    expected = oracle_states(q, k, v, 6, "checkpoint")
    check_close(impl(CH).cache_states(q, k, v, 6), expected, "cache_states(..., segment_len=6)",
                atol=1e-10, rtol=1e-10, axes=STATE_AXES, hint=state_hint(20, 6, "checkpoint"))


@pytest.mark.parametrize("mode", ["checkpoint", "independent"])
def test_cache_states_worked_example(impl, mode):
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1)  # [B, T, H, K]
    expected = oracle_states(x, x, x, 2, mode)
    got = impl(CH).cache_states(x, x, x, 2, mode)
    check_close(got, expected, f"cache_states on the worked example ({mode})", axes=STATE_AXES,
                hint=state_hint(3, 2, mode))
