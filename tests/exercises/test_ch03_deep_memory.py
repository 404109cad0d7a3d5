"""Grades chapter 3, a deep memory that learns at test time (exercises/ch03_deep_memory.py).

minimc is the oracle: minimc.memories.DLAMemory (Eq. 30-31) for the gradient and
minimc.memories.TitansMemory (Eq. 34-36) for the step. Inputs are small float64 tensors
with awkward sizes (E not a multiple of K, one-element heads) and nonzero momentum.
"""
import pytest
import torch

from grading import check_close, check_true
from minimc.memories import DLAMemory, TitansMemory

CH = "ch03_deep_memory"
SIZES = [(2, 3, 5, 20), (1, 1, 1, 1), (3, 2, 4, 7)]                      # (B, H, K, E)


def inputs(B, H, K, E, seed=0, scale=1.0):
    """state (W1 [B, H, E, K], W2 [B, H, K, E], m1, m2), k, v [B, H, K], lr, momentum, decay [B, H]."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)       # noqa: E731
    W1, W2 = r(B, H, E, K) * scale / E ** 0.5, r(B, H, K, E) * scale / K ** 0.5
    m1, m2 = 0.1 * r(B, H, E, K), 0.1 * r(B, H, K, E)
    k, v = r(B, H, K), r(B, H, K)
    u = lambda: torch.rand(B, H, generator=g, dtype=torch.float64)         # noqa: E731
    return (W1, W2, m1, m2), k, v, 0.3 * u(), 0.9 * u(), 1 - 0.2 * u()


def oracle_gradient(W1, W2, k, v):
    g1, g2 = DLAMemory(None)._grads(W1, W2, k[:, :, None], v[:, :, None])
    return g1[:, :, 0], g2[:, :, 0]                                         # [B, H, E, K], [B, H, K, E]


def oracle_step(state, k, v, lr, momentum, decay):
    return TitansMemory(None).step(state, k, v, lr=lr, momentum=momentum, decay=decay)


# ---- part 1: dla_gradient -------------------------------------------------------------------------

@pytest.mark.parametrize("B,H,K,E", SIZES)
def test_dla_gradient_matches_minimc(impl, B, H, K, E):
    (W1, W2, _, _), k, v, *_ = inputs(B, H, K, E)
    got = impl(CH).dla_gradient(W1, W2, k, v)
    check_close(got, oracle_gradient(W1, W2, k, v), "dla_gradient (dW1, dW2)")


def test_dla_gradient_large_preactivations(impl):
    """Large weights push z = k W2 into GELU's tails, where an approximate derivative shows."""
    (W1, W2, _, _), k, v, *_ = inputs(2, 2, 6, 24, seed=1, scale=3.0)
    check_close(impl(CH).dla_gradient(W1, W2, k, v), oracle_gradient(W1, W2, k, v),
                "dla_gradient (dW1, dW2) with large pre-activations (use the exact GELU, z Phi(z))")


def test_dla_gradient_worked_example(impl):
    one = lambda x: torch.full((1, 1, 1, 1), x, dtype=torch.float64)       # noqa: E731
    W1, W2, k, v = one(1.0), one(0.0), one(2.0)[..., 0], one(3.0)[..., 0]
    got = impl(CH).dla_gradient(W1, W2, k, v)
    check_close(got, oracle_gradient(W1, W2, k, v), "dla_gradient on the docstring's worked example")


# ---- part 2: titans_step --------------------------------------------------------------------------

@pytest.mark.parametrize("B,H,K,E", SIZES)
def test_titans_step_matches_minimc(impl, B, H, K, E):
    state, k, v, lr, mom, dec = inputs(B, H, K, E, seed=2)
    got = impl(CH).titans_step(state, k, v, lr, mom, dec)
    check_true(isinstance(got, (tuple, list)) and len(got) == 4,
               "titans_step should return the new state as a tuple (W1, W2, m1, m2)")
    check_close(got, oracle_step(state, k, v, lr, mom, dec), "titans_step state (W1, W2, m1, m2)")


def test_titans_step_worked_example(impl):
    one = lambda x: torch.full((1, 1, 1, 1), x, dtype=torch.float64)       # noqa: E731
    state = (one(1.0), one(0.0), one(0.0), one(0.0))
    k, v = one(2.0)[..., 0], one(3.0)[..., 0]
    lr, mom, dec = (torch.full((1, 1), x, dtype=torch.float64) for x in (0.1, 0.9, 1.0))
    got = impl(CH).titans_step(state, k, v, lr, mom, dec)
    check_close(got, oracle_step(state, k, v, lr, mom, dec), "titans_step on the docstring's worked example")


def test_titans_step_sequence(impl):
    """Eight tokens in a row, each step from the state the learner's previous step returned."""
    state, *_ = inputs(2, 2, 4, 16, seed=3)
    g = torch.Generator().manual_seed(4)
    mine = state
    for t in range(8):
        k, v = (torch.randn(2, 2, 4, generator=g, dtype=torch.float64) for _ in range(2))
        lr, mom, dec = (torch.rand(2, 2, generator=g, dtype=torch.float64) * s + o
                        for s, o in ((0.2, 0.0), (0.9, 0.0), (0.1, 0.9)))
        expected = oracle_step(tuple(x.clone() for x in mine), k, v, lr, mom, dec)
        mine = impl(CH).titans_step(mine, k, v, lr, mom, dec)
        check_close(mine, expected, f"titans_step state after token {t}")
