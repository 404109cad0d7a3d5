"""Grades chapter 3, a deep memory that learns at test time (exercises/ch03_deep_memory.py).

minimc is the oracle: minimc.memories.DLAMemory (Eq. 30-31) for the gradient and
minimc.memories.TitansMemory (Eq. 34-36) for the step. Inputs are small float64 tensors
with awkward sizes (E != K, so a transposed weight or gradient shows in its shape), nonzero
weights and momentum. Expected values are computed before the learner's function runs.
"""
import pytest
import torch

from grading import check_close, check_true
from minimc.memories import DLAMemory, TitansMemory

CH = "ch03_deep_memory"
AXES_1, AXES_2 = ("B", "H", "E", "K"), ("B", "H", "K", "E")               # W1 / dW1, W2 / dW2
GRAD_PARTS, STATE_PARTS = ("dW1", "dW2"), ("W1", "W2", "m1", "m2")
STATE_AXES = (AXES_1, AXES_2, AXES_1, AXES_2)
SIZES = [(2, 3, 5, 20), (1, 1, 1, 1), (3, 2, 4, 7)]                      # (B, H, K, E)


def inputs(B, H, K, E, seed=0, scale=1.0):
    """state (W1 [B, H, E, K], W2 [B, H, K, E], m1, m2), k, v [B, H, K], lr, momentum, decay
    [B, H]."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    W1, W2 = r(B, H, E, K) * scale / E ** 0.5, r(B, H, K, E) * scale / K ** 0.5
    m1, m2 = 0.1 * r(B, H, E, K), 0.1 * r(B, H, K, E)
    k, v = r(B, H, K), r(B, H, K)

    def u():
        return torch.rand(B, H, generator=g, dtype=torch.float64)

    return (W1, W2, m1, m2), k, v, 0.3 * u(), 0.9 * u(), 1 - 0.2 * u()


def oracle_gradient(W1, W2, k, v):
    g1, g2 = DLAMemory(None)._grads(W1, W2, k[:, :, None], v[:, :, None])
    return g1[:, :, 0], g2[:, :, 0]  # [B, H, E, K], [B, H, K, E]


def oracle_step(state, k, v, lr, momentum, decay):
    return TitansMemory(None).step(state, k, v, lr=lr, momentum=momentum, decay=decay)


def check_gradient(got, expected, what):
    """dW1 first (it needs only h = gelu(z)), then dW2 (it needs gelu'(z) and W1)."""
    check_true(isinstance(got, (tuple, list)) and len(got) == 2,
               f"dla_gradient should return a pair (dW1, dW2), got {type(got).__name__}")
    check_close(got[0], expected[0], f"{what}: dW1", axes=AXES_1,
                hint=lambda at: "dW1 = outer(h, delta) with h = gelu(k @ W2), delta = -v")
    check_close(got[1], expected[1], f"{what}: dW2", axes=AXES_2,
                hint=lambda at: "dW1 is right; dW2 = outer(k, (delta @ W1^T) * gelu'(z)) with the "
                                "exact gelu'(z) = Phi(z) + z phi(z)")


def example():
    """The docstrings' worked example: K = 1, E = 2, W1 = [[1], [2]], W2 = [[1, -1]], k = 1,
    v = 2."""
    d = torch.float64
    W1 = torch.tensor([[1.0], [2.0]], dtype=d).view(1, 1, 2, 1)            # [B, H, E, K]
    W2 = torch.tensor([[1.0, -1.0]], dtype=d).view(1, 1, 1, 2)             # [B, H, K, E]
    return W1, W2, torch.ones(1, 1, 1, dtype=d), torch.full((1, 1, 1), 2.0, dtype=d)


# ---- part 1: dla_gradient ------------------------------------------------------------------------

@pytest.mark.parametrize("B,H,K,E", SIZES)
def test_dla_gradient_matches_minimc(impl, B, H, K, E):
    (W1, W2, _, _), k, v, *_ = inputs(B, H, K, E)
    expected = oracle_gradient(W1, W2, k, v)
    check_gradient(impl(CH).dla_gradient(W1, W2, k, v), expected, "dla_gradient")


def test_dla_gradient_large_preactivations(impl):
    """Large weights push z = k W2 into GELU's tails, where an approximate derivative shows."""
    (W1, W2, _, _), k, v, *_ = inputs(2, 2, 6, 24, seed=1, scale=3.0)
    expected = oracle_gradient(W1, W2, k, v)
    check_gradient(impl(CH).dla_gradient(W1, W2, k, v), expected,
                   "dla_gradient with large pre-activations (use the exact GELU, z Phi(z))")


def test_dla_gradient_worked_example(impl):
    W1, W2, k, v = example()
    expected = oracle_gradient(W1, W2, k, v)  # dW1 [[-1.6827], [0.3173]], dW2 [[-2.1666, 0.3333]]
    check_gradient(impl(CH).dla_gradient(W1, W2, k, v), expected, "the worked example")


# ---- part 2: titans_step -------------------------------------------------------------------------

@pytest.mark.parametrize("B,H,K,E", SIZES)
def test_titans_step_matches_minimc(impl, B, H, K, E):
    state, k, v, lr, mom, dec = inputs(B, H, K, E, seed=2)
    expected = oracle_step(state, k, v, lr, mom, dec)
    got = impl(CH).titans_step(state, k, v, lr, mom, dec)
    check_true(isinstance(got, (tuple, list)) and len(got) == 4,
               "titans_step should return the new state as a tuple (W1, W2, m1, m2)")
    check_close(got, expected, "titans_step's new", parts=STATE_PARTS, axes=STATE_AXES)


def test_titans_step_worked_example(impl):
    W1, W2, k, v = example()
    state = (W1, W2, torch.zeros_like(W1), torch.zeros_like(W2))
    lr, mom, dec = (torch.full((1, 1), x, dtype=torch.float64) for x in (0.1, 0.9, 1.0))
    expected = oracle_step(state, k, v, lr, mom, dec)        # W1 [[1.0801], [1.9849]], ...
    got = impl(CH).titans_step(state, k, v, lr, mom, dec)
    check_close(got, expected, "the worked example's new", parts=STATE_PARTS, axes=STATE_AXES)


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
        check_close(mine, expected, f"after token {t}, the new", parts=STATE_PARTS,
                    axes=STATE_AXES)
