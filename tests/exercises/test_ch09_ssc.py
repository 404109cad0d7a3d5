"""Grades chapter 9, the SSC router (exercises/ch09_ssc.py).

minimc is the oracle: minimc.caching.gate(..., variant="ssc") (Eq. 16-17), and for top_k >= N,
gate(..., variant="grm") (SSC that keeps every segment is GRM). Expected values are computed
before the learner's function runs.
"""
import pytest
import torch

from grading import GradingError, check_close, check_true
from minimc.caching import gate

CH = "ch09_ssc"
AXES = ("B", "T", "H", "N")


def case(B=2, T=11, H=3, N=5, C=2, seed=0, scale=1.0):
    """Scores as memory_caching makes them: token t (segment t // C) may read segments i < t // C.
    valid is [T, 1, N] (broadcast over batch and heads, as inside memory_caching)."""
    g = torch.Generator().manual_seed(seed)
    scores = scale * torch.randn(B, T, H, N, generator=g, dtype=torch.float64)
    online = scale * torch.randn(B, T, H, generator=g, dtype=torch.float64)
    valid = (torch.arange(T) // C)[:, None, None] > torch.arange(N)        # [T, 1, N]
    return scores, online, valid


def hint(at):
    return (f"token t = {at['T']}: a softmax over the online memory (LAST column) and the selected "
            "valid segments only; 0 for every other segment")


def check_route(call, scores, online, valid, top_k, variant="ssc"):
    """``call()`` runs the learner's topk_route; minimc's answer is computed first."""
    gates, selected = gate(scores, online, valid, "ssc", top_k)
    if variant == "grm":  # the same gates, GRM's way
        gates = gate(scores, online, valid, "grm", top_k)[0]
    got = call()
    check_true(isinstance(got, (tuple, list)) and len(got) == 2,
               f"topk_route should return (gates, selected), got {type(got).__name__}")
    g, s = got
    check_close(g, gates, "gates", axes=AXES, hint=hint)
    check_true(isinstance(s, torch.Tensor) and tuple(s.shape) == tuple(selected.shape),
               f"selected should have shape {tuple(selected.shape)} (k = min(top_k, N)), got "
               f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}")
    try:  # any order: compare sorted
        check_close(s.sort(-1).values.to(selected.dtype), selected.sort(-1).values,
                    "selected (sorted)", axes=AXES[:3] + ("slot",))
    except GradingError as e:
        raise GradingError(f"{e}\n  (selected holds the indices of the top-k valid segments, -1 "
                           "for empty slots)") from None


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_topk_route_matches_minimc(impl, top_k):
    scores, online, valid = case()
    check_route(lambda: impl(CH).topk_route(scores, online, valid, top_k), scores, online, valid,
                top_k)


def test_topk_route_full_valid_mask(impl):
    """valid with the full shape [B, T, H, N] (every row its own pattern)."""
    scores, online, _ = case(B=2, T=6, H=2, N=7, seed=1)
    valid = torch.rand(2, 6, 2, 7, generator=torch.Generator().manual_seed(2)) > 0.4
    check_route(lambda: impl(CH).topk_route(scores, online, valid, 3), scores, online, valid, 3)


@pytest.mark.parametrize("top_k", [5, 9])
def test_topk_at_least_n_is_grm(impl, top_k):
    """top_k >= N keeps every completed segment: the gates are GRM's (Eq. 8)."""
    scores, online, valid = case(seed=3)
    check_route(lambda: impl(CH).topk_route(scores, online, valid, top_k), scores, online, valid,
                top_k, "grm")


def test_no_completed_segment(impl):
    """Tokens of the first segment: only the online memory, gate 1; every slot of selected is -1."""
    scores, online, valid = case(T=4, C=4, seed=4)                          # nothing is valid yet
    check_route(lambda: impl(CH).topk_route(scores, online, valid, 2), scores, online, valid, 2)


def test_large_scores_are_stable(impl):
    scores, online, valid = case(seed=5, scale=400.0)                       # exp(400 * 3) overflows
    check_route(lambda: impl(CH).topk_route(scores, online, valid, 2), scores, online, valid, 2)


def test_gradients_reach_the_scores(impl):
    """The router is trained through its gate values: d(sum w * gates) / d(scores, online) as
    minimc's."""
    scores, online, valid = case(seed=6)
    w = torch.randn(2, 11, 3, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    a, b = scores.clone().requires_grad_(), online.clone().requires_grad_()
    gates, _ = impl(CH).topk_route(a, b, valid, 2)
    check_true(isinstance(gates, torch.Tensor) and gates.requires_grad,
               "gates do not depend on the scores through autograd (did you detach, or build "
               "them in numpy?)")
    got = torch.autograd.grad((w * gates).sum(), (a, b), allow_unused=True)
    a2, b2 = scores.clone().requires_grad_(), online.clone().requires_grad_()
    expected = torch.autograd.grad((w * gate(a2, b2, valid, "ssc", 2)[0]).sum(), (a2, b2))
    check_true(all(x is not None for x in got),
               "no gradient reaches the scores or the online score")
    check_close(got, expected, "gradients (d scores, d online_score)")
