"""Grades chapter 6, Residual Memory's readout (exercises/ch06_residual.py).

minimc is the oracle: minimc.memory_caching(..., variant="residual") on a linear memory. The test
feeds the learner the pieces minimc computes: the online readouts (minimc.recurrent_memory over the
whole sequence in checkpoint mode, over each segment alone in independent mode) and the cached
states (memory_caching's info["states"]). The stream (part 2) is graded against
memory_caching(variant="residual") for linear (with and without decay), delta and SWLA memories,
in both modes, and must read one token at a time and hold a state that does not grow.
"""
import inspect

import pytest
import torch

import minimc
from grading import check_close, check_true, time_limit

CH = "ch06_residual"


def tokens(B=2, T=37, H=2, K=4, V=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, D, generator=g, dtype=torch.float64) for D in (K, K, V)]


def pieces(q, k, v, C, mode):
    """(online readouts [B, T, H, V], cached states [B, H, N, K, V], scaled q, minimc's residual
    output)."""
    expected, info = minimc.memory_caching(q, k, v, memory="linear", variant="residual",
                                           segment_len=C, mode=mode, return_info=True)
    if mode == "checkpoint":                                                # one continuing memory
        online, _ = minimc.recurrent_memory(q, k, v, "linear")
    else:                                                                   # each segment from zero
        online = torch.cat([minimc.recurrent_memory(q[:, a:b], k[:, a:b], v[:, a:b], "linear")[0]
                            for a, b in info["bounds"]], 1)
    return online, info["states"][0], q * q.shape[-1] ** -0.5, expected


O_AXES = ("B", "T", "H", "V")


def readout_hint(C):
    def hint(at):
        t = at["T"]
        if t < C:
            return "segment 0 reads no cached state: y_t = online_t there"
        if t % C == 0:
            return (f"the first token of segment {t // C}: it adds S^(i)^T q_t for the completed "
                    f"segments i < {t // C} only (not its own, i = {t // C})")
        return f"token {t % C} of segment {t // C}, after correct ones"
    return hint


@pytest.mark.parametrize("mode", ["checkpoint", "independent"])
@pytest.mark.parametrize("T,C", [(37, 8), (16, 4), (9, 1), (6, 10)])
def test_residual_readout_matches_minimc(impl, mode, T, C):
    q, k, v = tokens(T=T)
    online, states, qs, expected = pieces(q, k, v, C, mode)
    got = impl(CH).residual_readout(online, states, qs, C)
    check_close(got, expected, f"residual_readout (T={T}, segment_len={C}, {mode})", atol=1e-10,
                rtol=1e-10, axes=O_AXES, hint=readout_hint(C))


def test_residual_readout_first_segment_is_online(impl):
    q, k, v = tokens(T=20)
    online, states, qs, expected = pieces(q, k, v, 8, "checkpoint")
    got = impl(CH).residual_readout(online, states, qs, 8)
    check_true(isinstance(got, torch.Tensor) and got.shape == expected.shape,
               f"residual_readout should return a tensor of shape {tuple(expected.shape)}")
    check_close(got[:, :8], expected[:, :8], "residual_readout in segment 0 (it reads no cached "
                "state)", atol=1e-10, rtol=1e-10, axes=O_AXES, hint=readout_hint(8))


def test_residual_readout_worked_example(impl):
    q, k, v = tokens(B=1, T=3, H=1, K=2, V=2, seed=3)
    online, states, qs, expected = pieces(q, k, v, 2, "independent")
    check_close(impl(CH).residual_readout(online, states, qs, 2), expected,
                "residual_readout on the worked example", atol=1e-10, rtol=1e-10, axes=O_AXES,
                hint=readout_hint(2))


# ---- part 2: the O(1) stream (the collapse, Eq. 12-13) -------------------------------------------

STREAM_CASES = [("linear", "checkpoint", True), ("linear", "independent", False),
                ("delta", "independent", True), ("swla", "checkpoint", True)]


def stream_inputs(memory, decay, B=2, T=37, H=2, K=4, V=3, seed=0):
    """q (already scaled), k, v and the memory's per-token scalars ([B, T, H], in sane ranges)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    def uni(lo):
        return lo + (1 - lo) * torch.rand(B, T, H, generator=g, dtype=torch.float64)

    q, k, v = rnd(B, T, H, K) * K ** -0.5, rnd(B, T, H, K), rnd(B, T, H, V)
    opts = {"linear": {"decay": uni(0.7)} if decay else {}, "delta": {"beta": uni(0.1)},
            "swla": {"a": uni(0.7), "b": uni(0.2), "c": uni(0.2)}}[memory]
    return q, k, v, opts


class Feed:
    """The token stream: yields (q_t, k_t, v_t, opts_t) copies and counts what was read."""

    def __init__(self, q, k, v, opts):
        self.q, self.k, self.v, self.opts, self.read = q, k, v, opts, 0

    def __iter__(self):
        for t in range(self.q.shape[1]):
            self.read = t + 1
            yield (self.q[:, t].clone(), self.k[:, t].clone(), self.v[:, t].clone(),
                   {n: x[:, t].clone() for n, x in self.opts.items()})


def held(gen, skip, depth=0):
    """Numbers held in the generator's frame (and any generator it delegates to): every tensor
    among its local variables, inside lists, tuples, dicts and sets too; ``skip``: ids to ignore."""
    seen, total = set(), 0

    def walk(x, d):
        nonlocal total
        if id(x) in seen or id(x) in skip or d > 4:
            return
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            total += x.numel()
        elif isinstance(x, (list, tuple, set, frozenset)):
            for y in x:
                walk(y, d + 1)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y, d + 1)
    while gen is not None and inspect.isgenerator(gen) and gen.gi_frame is not None:
        for value in gen.gi_frame.f_locals.values():
            walk(value, 0)
        gen = gen.gi_yieldfrom
    return total


def stream_hint(C, mode):
    restart = "; independent: restart the online state from state0" if mode == "independent" else ""

    def hint(at):
        t = at["T"]
        if t < C:
            return "segment 0 reads no cached state: y_t = S_t^T q_t, S_t updated by step first"
        if t % C == 0:
            return (f"the first token of segment {t // C}: R must hold the states cached at the "
                    f"ends of segments 0..{t // C - 1} (add S to R after a segment's last token"
                    f"{restart})")
        return f"token {t % C} of segment {t // C}, after correct ones"
    return hint


def run_stream(impl, memory, mode, decay, T=37, C=4, seed=0):
    """The learner's stream over T tokens, checked as it goes; returns y [B, T, H, V]."""
    q, k, v, opts = stream_inputs(memory, decay, T=T, seed=seed)
    mem, _ = minimc.make_memory(memory, {})
    state0 = mem.init_state(q, k, v)
    feed = Feed(q, k, v, opts)
    gen = impl(CH).residual_stream(feed, mem.step, state0, C, mode)
    check_true(inspect.isgenerator(gen), "residual_stream should be a generator (a function that "
               f"`yield`s y_t token by token), got a {type(gen).__name__}")
    skip = {id(feed), id(mem.step)} | {id(x) for x in gen.gi_frame.f_locals.values()
                                         if isinstance(x, (tuple, list))}   # state0 as given
    slack = sum(x.numel() for x in state0) + sum(x[:, 0].numel() for x in (q, k, v, *opts.values()))
    ys, early = [], None
    with time_limit("residual_stream"):
        for t in range(T):
            y = next(gen, None)
            check_true(isinstance(y, torch.Tensor), f"residual_stream gave {type(y).__name__} as "
                       f"output {t} (of {T}): yield y_t, a tensor [B, H, V], once per token")
            check_true(feed.read == t + 1, f"residual_stream read {feed.read} tokens before it "
                       f"yielded y_{t}: a stream reads token t, then yields y_t (no look-ahead)")
            ys.append(y)
            if t == 15:
                early = held(gen, skip)
    grew = held(gen, skip) - early
    check_true(grew <= slack, f"residual_stream holds {grew} more numbers after token {T - 1} than "
               f"after token 15: a growing list (of states, tokens or outputs?); keep only the "
               f"online state, the running sum R of the cached states and a counter")
    return torch.stack(ys, 1), (q, k, v, opts)                              # [B, T, H, V]


@pytest.mark.parametrize("memory,mode,decay", STREAM_CASES)
def test_residual_stream_matches_minimc(impl, memory, mode, decay):
    q, k, v, opts = stream_inputs(memory, decay)
    expected = minimc.memory_caching(q, k, v, memory=memory, variant="residual", segment_len=4,
                                     mode=mode, scale=1.0, **opts)          # [B, T, H, V]
    got, _ = run_stream(impl, memory, mode, decay)
    check_close(got, expected, f"residual_stream's outputs ({memory} memory, {mode})",
                atol=1e-10, rtol=1e-8, axes=("B", "T", "H", "V"), hint=stream_hint(4, mode))


@pytest.mark.parametrize("mode", ["checkpoint", "independent"])
def test_residual_stream_worked_example(impl, mode):
    one = torch.ones(1, 3, 1, 1, dtype=torch.float64)
    v = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1)
    expected = minimc.memory_caching(one, one, v, memory="linear", variant="residual",
                                     segment_len=2, mode=mode, scale=1.0)   # [1, 3, 9] / [1, 3, 6]
    mem, _ = minimc.make_memory("linear", {})
    gen = impl(CH).residual_stream(Feed(one, one, v, {}), mem.step, mem.init_state(one, one, v),
                                   2, mode)
    check_true(inspect.isgenerator(gen), "residual_stream should be a generator (it `yield`s y_t)")
    with time_limit("residual_stream"):
        ys = list(gen)
    check_true(len(ys) == 3 and all(isinstance(y, torch.Tensor) for y in ys),
               f"residual_stream should yield 3 tensors for 3 tokens, got {len(ys)} items")
    check_close(torch.stack(ys, 1), expected, f"the worked example ({mode})",
                axes=("B", "T", "H", "V"), hint=stream_hint(2, mode))
