"""Grades chapter 2, better fixed-size memories (exercises/ch02_fixed_memories.py).

minimc is the oracle: minimc.memories.DeltaMemory.step and SWLAMemory.step for one token, and
minimc.recurrent_memory(..., reference=True) for a whole sequence (the token loop); float64 inputs,
K != V, keys of any length (minimc L2-normalises the delta rule's keys), T not a multiple of the
chunk size. Expected values are computed before the learner's function runs.
"""
import pytest
import torch

import minimc
from grading import check_causal, check_close, check_true
from minimc.memories import DeltaMemory, SWLAMemory

CH = "ch02_fixed_memories"
S_AXES, O_AXES = ("B", "H", "K", "V"), ("B", "T", "H", "V")
SWLA_PARTS, SWLA_AXES = ("S_t", "k_t", "v_t"), (S_AXES, ("B", "H", "K"), ("B", "H", "V"))


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def unit_interval(*shape, seed=0, low=0.0):
    u = torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return low + (1 - low) * u


# ---- delta rule, one token -----------------------------------------------------------------------

@pytest.mark.parametrize("B,H,K,V", [(2, 3, 5, 4), (1, 1, 1, 1), (1, 2, 8, 3)])
def test_delta_rule_step_matches_minimc(impl, B, H, K, V):
    S, k, v = rand(B, H, K, V, seed=1), 3 * rand(B, H, K, seed=2), rand(B, H, V, seed=3)
    beta = unit_interval(B, H, seed=4, low=0.1)
    expected = DeltaMemory().step((S,), k, v, beta=beta)[0]
    check_close(impl(CH).delta_rule_step(S, k, v, beta), expected, "S_new", axes=S_AXES)


def test_delta_rule_normalises_keys(impl):
    S, v, beta = rand(1, 2, 4, 3, seed=5), rand(1, 2, 3, seed=6), unit_interval(1, 2, seed=7)
    k = rand(1, 2, 4, seed=8)
    k = 10 * k / k.norm(dim=-1, keepdim=True)                              # keys of length 10
    expected = DeltaMemory().step((S,), k, v, beta=beta)[0]
    got = impl(CH).delta_rule_step(S, k, v, beta)
    check_true(isinstance(got, torch.Tensor) and got.shape == expected.shape
               and torch.allclose(got, expected, atol=1e-5, rtol=1e-4),
               "delta_rule_step with keys of length 10 does not match minimc: normalise k to unit "
               "length first (F.normalize(k, dim=-1)), as minimc's DeltaMemory does")


def test_delta_rule_beta_zero_stores_nothing(impl):
    S, k, v = rand(2, 2, 4, 5, seed=9), rand(2, 2, 4, seed=10), rand(2, 2, 5, seed=11)
    beta = torch.zeros(2, 2, dtype=torch.float64)
    expected = DeltaMemory().step((S,), k, v, beta=beta)[0]               # S itself
    check_close(impl(CH).delta_rule_step(S, k, v, beta), expected,
                "S_new with beta = 0 (should be S itself)", axes=S_AXES)


def test_delta_rule_worked_example(impl):
    S = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    k, v = (torch.full((1, 1, 1), x, dtype=torch.float64) for x in (2.0, 3.0))
    beta = torch.full((1, 1), 0.5, dtype=torch.float64)
    expected = DeltaMemory().step((S,), k, v, beta=beta)[0]               # [[2]]
    check_close(impl(CH).delta_rule_step(S, k, v, beta), expected, "S_new of the worked example")


def test_delta_rule_sequence_matches_recurrent_memory(impl):
    B, T, H, K, V = 2, 13, 2, 6, 5
    q, k, v = rand(B, T, H, K, seed=12), rand(B, T, H, K, seed=13), rand(B, T, H, V, seed=14)
    beta = unit_interval(B, T, H, seed=15)
    _, (expected,) = minimc.recurrent_memory(q, k, v, "delta", beta=beta, reference=True)
    S = torch.zeros(B, H, K, V, dtype=torch.float64)
    for t in range(T):
        S = impl(CH).delta_rule_step(S, k[:, t], v[:, t], beta[:, t])
    check_close(S, expected, f"the state after {T} delta_rule_step calls", axes=S_AXES)


# ---- delta rule, chunkwise -----------------------------------------------------------------------

def delta_oracle(q, k, v, beta, scale=None):
    o, (S,) = minimc.recurrent_memory(q, k, v, "delta", beta=beta, scale=scale, reference=True)
    return o, S


def delta_hint(C):
    def hint(at):
        t = at["T"]
        if t == 0:
            return ("the very first token: keys L2-normalised (F.normalize(k, dim=-1))? q times "
                    "scale (and not normalised)?")
        if t < C:
            return ("inside the first chunk: the triangular system (strictly lower part, tril(-1), "
                    "with beta on the rows) or tril(Q K^T) with its diagonal kept?")
        if t % C == 0:
            return (f"the first token of chunk {t // C}: the state at the chunk's start enters "
                    "twice, V - K S on the right-hand side and Q S in O; is S carried over?")
        return f"token {t % C} of chunk {t // C}, after correct ones"
    return hint


def pair(got):
    check_true(isinstance(got, tuple) and len(got) == 2,
               f"delta_rule_chunked must return a pair (o, S_T), got {type(got).__name__}")
    return got


@pytest.mark.parametrize("T,C", [(37, 8), (64, 16), (10, 1), (6, 64), (19, 19)])
def test_delta_rule_chunked_matches_minimc(impl, T, C):
    q, k = rand(2, T, 2, 5, seed=20 + T), 3 * rand(2, T, 2, 5, seed=21)   # keys of any length
    v = rand(2, T, 2, 3, seed=22)
    beta = unit_interval(2, T, 2, seed=23, low=0.1)
    expected = delta_oracle(q, k, v, beta)
    o, S = pair(impl(CH).delta_rule_chunked(q, k, v, beta, chunk_size=C))
    check_close(o, expected[0], f"output o (T = {T}, chunk_size = {C})", axes=O_AXES,
                hint=delta_hint(C))
    check_close(S, expected[1], f"final state S_T (T = {T}, chunk_size = {C})", axes=S_AXES)


def test_delta_rule_chunked_scale_and_full_writes(impl):
    """beta = 1 (a full overwrite) and scale = 0.5; K > V."""
    q, k, v = rand(1, 25, 3, 8, seed=30), rand(1, 25, 3, 8, seed=31), rand(1, 25, 3, 2, seed=32)
    beta = torch.ones(1, 25, 3, dtype=torch.float64)
    expected = delta_oracle(q, k, v, beta, scale=0.5)
    o, S = pair(impl(CH).delta_rule_chunked(q, k, v, beta, chunk_size=8, scale=0.5))
    check_close(o, expected[0], "output o (beta = 1, scale = 0.5)", axes=O_AXES,
                hint=delta_hint(8))
    check_close(S, expected[1], "final state S_T (beta = 1, scale = 0.5)", axes=S_AXES)


def test_delta_rule_chunked_worked_example(impl):
    one = torch.ones(1, 2, 1, 1, dtype=torch.float64)
    v = torch.tensor([2.0, 3.0], dtype=torch.float64).view(1, 2, 1, 1)
    beta = torch.full((1, 2, 1), 0.5, dtype=torch.float64)
    expected = delta_oracle(one, one, v, beta, scale=1.0)                 # o = [1, 2], S = 2
    for C in (1, 2):
        got = pair(impl(CH).delta_rule_chunked(one, one, v, beta, chunk_size=C, scale=1.0))
        check_close(got, expected, f"the worked example with chunk_size = {C}:",
                    parts=("o", "S_T"), axes=(O_AXES, S_AXES))


def test_delta_rule_chunked_is_causal(impl):
    q, k, v = rand(2, 20, 2, 4, seed=40), rand(2, 20, 2, 4, seed=41), rand(2, 20, 2, 3, seed=42)
    beta = unit_interval(2, 20, 2, seed=43, low=0.1)
    expected = delta_oracle(q, k, v, beta)[0]
    k2, v2 = k.clone(), v.clone()
    k2[:, 11:], v2[:, 11:] = rand(2, 9, 2, 4, seed=44), 3 * rand(2, 9, 2, 3, seed=45)
    before = pair(impl(CH).delta_rule_chunked(q, k, v, beta, chunk_size=8))[0]
    after = pair(impl(CH).delta_rule_chunked(q, k2, v2, beta, chunk_size=8))[0]
    check_causal(before, after, 11, "output o", "the keys and values",
                 "tril(Q K^T) (and the system's tril) must drop every j > i")
    check_close(before, expected, "output o", axes=O_AXES, hint=delta_hint(8))


# ---- SWLA ----------------------------------------------------------------------------------------

def swla_inputs(B=2, H=3, K=5, V=4, seed=20):
    state = (rand(B, H, K, V, seed=seed), rand(B, H, K, seed=seed + 1),
             rand(B, H, V, seed=seed + 2))
    k, v = rand(B, H, K, seed=seed + 3), rand(B, H, V, seed=seed + 4)
    a, b, c = (unit_interval(B, H, seed=seed + 5 + i, low=0.2) for i in range(3))
    return state, k, v, a, b, c


@pytest.mark.parametrize("B,H,K,V", [(2, 3, 5, 4), (1, 1, 1, 1), (1, 2, 3, 7)])
def test_swla_step_matches_minimc(impl, B, H, K, V):
    state, k, v, a, b, c = swla_inputs(B, H, K, V)
    expected = SWLAMemory().step(state, k, v, a=a, b=b, c=c)
    check_close(impl(CH).swla_step(state, k, v, a, b, c), expected, "new state",
                parts=SWLA_PARTS, axes=SWLA_AXES)


def test_swla_worked_example(impl):
    def t(x, *s):
        return torch.tensor(x, dtype=torch.float64).view(*s)

    state = (t(1.0, 1, 1, 1, 1), t(1.0, 1, 1, 1), t(2.0, 1, 1, 1))
    k, v, a, b, c = t(1.0, 1, 1, 1), t(3.0, 1, 1, 1), t(0.5, 1, 1), t(1.0, 1, 1), t(2.0, 1, 1)
    expected = SWLAMemory().step(state, k, v, a=a, b=b, c=c)              # ([[8.5]], [1], [3])
    check_close(impl(CH).swla_step(state, k, v, a, b, c), expected,
                "new state of the worked example", parts=SWLA_PARTS)


def test_swla_sequence_matches_recurrent_memory(impl):
    B, T, H, K, V = 2, 11, 2, 4, 3
    q, k, v = rand(B, T, H, K, seed=30), rand(B, T, H, K, seed=31), rand(B, T, H, V, seed=32)
    a, b, c = (unit_interval(B, T, H, seed=33 + i) for i in range(3))
    _, expected = minimc.recurrent_memory(q, k, v, "swla", a=a, b=b, c=c, reference=True)
    state = tuple(torch.zeros(*s, dtype=torch.float64)
                  for s in ((B, H, K, V), (B, H, K), (B, H, V)))
    for t in range(T):
        state = impl(CH).swla_step(state, k[:, t], v[:, t], a[:, t], b[:, t], c[:, t])
    check_close(state, expected, f"the state after {T} swla_step calls:", parts=SWLA_PARTS,
                axes=SWLA_AXES)
