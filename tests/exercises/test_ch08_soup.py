"""Grades chapter 8, Memory Soup (exercises/ch08_soup.py).

minimc is the oracle: minimc.mix_weights (the souped weights theta* of Eq. 15) and, end to
end, minimc.memory_caching(variant="soup") with a deep memory (Eq. 15). Expected values are
computed before the learner's function runs.
"""
import pytest
import torch

import minimc
from grading import check_close
from minimc.memories import make_memory

CH = "ch08_soup"


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def axes(leaf):
    return ("B", "H", "T") + tuple(f"leaf dim {i}" for i in range(len(leaf)))


def hint(at):
    return (f"token t = {at['T']}: theta*_t = gates[b, t, h, N] * online[b, h, t] + sum_i "
            "gates[b, t, h, i] * cache[b, h, i] (the online gate is the LAST column)")


def oracle(online, cache, gates):
    """minimc's mix, with the gates in memory_caching's layout [B, T, H, N + 1] (online last)."""
    return minimc.mix_weights(gates, (online,), (cache,))[0]


@pytest.mark.parametrize("leaf", [(5, 6), (), (4,), (2, 3, 4)],
                         ids=["matrix", "scalar", "vector", "3d"])
def test_soup_weights_matches_minimc(impl, leaf):
    B, T, H, N = 2, 7, 3, 4  # all different: no silent transposes
    online, cache = rnd(B, H, T, *leaf, seed=1), rnd(B, H, N, *leaf, seed=2)
    gates = rnd(B, T, H, N + 1, seed=3).softmax(-1)
    expected = oracle(online, cache, gates)
    check_close(impl(CH).soup_weights(online, cache, gates), expected, "soup_weights",
                axes=axes(leaf), hint=hint)


def test_soup_weights_uses_gates_as_given(impl):
    """Residual-style gates (all ones, not a softmax): no renormalising."""
    B, T, H, N = 1, 5, 2, 3
    online, cache = rnd(B, H, T, 3, 2, seed=4), rnd(B, H, N, 3, 2, seed=5)
    gates = rnd(B, T, H, N + 1, seed=6).abs() * 2
    expected = oracle(online, cache, gates)
    check_close(impl(CH).soup_weights(online, cache, gates), expected,
                "soup_weights with gates that do not sum to 1", axes=axes((3, 2)), hint=hint)


def test_soup_weights_worked_example(impl):
    online, cache = torch.tensor([[[1., 2.]]]), torch.tensor([[[10.]]])
    gates = torch.tensor([[[[0., 1.]], [[0.5, 0.5]]]])                      # [1, 2, 1, 2]
    expected = oracle(online, cache, gates)                                 # [[[1., 6.]]]
    check_close(impl(CH).soup_weights(online, cache, gates), expected,
                "soup_weights on the docstring's example", axes=axes(()), hint=hint)


@pytest.mark.parametrize("memory", ["titans", "dla"])
def test_soup_of_a_deep_memory_matches_memory_caching(impl, memory):
    """Eq. 15 end to end: mix every leaf of the per-token states with soup_weights, read each token
    through its own souped memory, compare with minimc.memory_caching(variant="soup")."""
    g = torch.Generator().manual_seed(7)
    B, T, H, K, C = 2, 13, 2, 4, 4                                  # segments 4, 4, 4, 1
    q, k, v, u = (torch.randn(B, T, H, K, generator=g, dtype=torch.float64) for _ in range(4))
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    opts = dict(weights=minimc.init_deep_weights(H, K, generator=g, dtype=torch.float64),
                lr=0.01 + 0.2 * torch.rand(B, T, H, generator=g, dtype=torch.float64))
    if memory == "titans":
        opts.update(momentum=torch.full((B, T, H), 0.5, dtype=torch.float64),
                    decay=torch.full((B, T, H), 0.95, dtype=torch.float64))
    expected, info = minimc.memory_caching(q, k, v, u, memory=memory, variant="soup",
                                           segment_len=C, mode="independent", scale=1.0,
                                           return_info=True, **opts)
    mem, per_token = make_memory(memory, opts)
    state0 = mem.init_state(q, k, v)
    stacks = []
    for a, b in info["bounds"]:                             # independent: each segment from state0
        stack, _ = mem.token_states(q[:, a:b], k[:, a:b], v[:, a:b], state0,
                                    **{n: x[:, a:b] for n, x in per_token.items()})
        stacks.append(stack)
    online = tuple(torch.cat(x, 2) for x in zip(*stacks))           # leaves [B, H, T, ...]
    mixed = tuple(impl(CH).soup_weights(x, c, info["gates"])
                  for x, c in zip(online, info["states"]))
    for name, got, x, c in zip(("W1", "W2", "m1", "m2"), mixed, online, info["states"]):
        check_close(got, oracle(x, c, info["gates"]), f"the souped {name}",
                    axes=("B", "H", "T", "row", "column"), hint=hint)
    check_close(mem.read_each(mixed, q), expected, "y_t read through your souped weights",
                axes=("B", "T", "H", "K"))
