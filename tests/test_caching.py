"""Memory Caching: every identity of the design doc, streaming, causality, gradients."""
import numpy as np
import pytest
import torch

import minimc
from minimc.caching import VARIANTS
from minimc.memories import MEMORIES as REGISTRY, Memory
from _inputs import DEEP, MEMORIES, inputs

MODES = ["checkpoint", "independent"]


def close(a, b, tol=1e-10):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err < tol, f"max abs difference {err:.3g} >= {tol}"


def mc(q, k, v, u=None, memory="linear", opts=None, **kw):
    opts = dict(opts or {})
    if memory in DEEP:
        opts.setdefault("chunk_size", 1)
    return minimc.memory_caching(q, k, v, u, memory=memory, **kw, **opts)


def test_segment_bounds():
    assert minimc.segment_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert minimc.segment_bounds(10, 10) == minimc.segment_bounds(10, 99) == [(0, 10)]
    assert minimc.segment_bounds(3, 1) == [(0, 1), (1, 2), (2, 3)]
    assert [b - a for a, b in minimc.segment_bounds(37, 0, "log")] == [32, 4, 1]
    assert [b - a for a, b in minimc.segment_bounds(64, 0, "log")] == [64]
    assert (minimc.segment_bounds(np.int64(37), np.int64(8), "log")
            == minimc.segment_bounds(37, 8, "log"))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("memory", MEMORIES)
def test_one_segment_is_the_plain_memory(memory, variant):
    q, k, v, u, opts = inputs(memory, T=30)
    plain, _ = minimc.recurrent_memory(q, k, v, memory, **opts,
                                       **({"chunk_size": 1} if memory in DEEP else {}))
    close(mc(q, k, v, u, memory, opts, variant=variant, segment_len=30), plain)
    close(mc(q, k, v, u, memory, opts, variant=variant, segment_len=1000), plain)


def test_residual_independent_linear_collapses_to_linear_attention():
    """Eq. 12-13: the sum of per-segment linear memories is linear attention over the prefix."""
    q, k, v, u, _ = inputs("linear", T=41)
    plain, _ = minimc.recurrent_memory(q, k, v, "linear")
    for C in (1, 4, 7):
        close(mc(q, k, v, u, variant="residual", mode="independent", segment_len=C), plain)
    # in checkpoint mode early tokens are counted several times: no collapse
    assert (mc(q, k, v, u, variant="residual", segment_len=7) - plain).abs().max() > 1e-2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("memory", ["linear", "delta", "swla"])
def test_soup_equals_grm_for_matrix_memories(memory, mode):
    q, k, v, u, opts = inputs(memory, T=45)
    close(mc(q, k, v, u, memory, opts, variant="soup", mode=mode, segment_len=6),
          mc(q, k, v, u, memory, opts, variant="grm", mode=mode, segment_len=6))


@pytest.mark.parametrize("memory", DEEP)
def test_soup_differs_from_grm_for_deep_memory(memory):
    q, k, v, u, opts = inputs(memory, T=45)
    soup = mc(q, k, v, u, memory, opts, variant="soup", segment_len=6)
    grm = mc(q, k, v, u, memory, opts, variant="grm", segment_len=6)
    assert (soup - grm).abs().max() > 1e-4
    close(soup[:, :6], grm[:, :6])                                      # first segment: online only


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("memory", MEMORIES)
def test_ssc_with_all_segments_is_grm(memory, mode):
    q, k, v, u, opts = inputs(memory, T=40)
    grm = mc(q, k, v, u, memory, opts, variant="grm", mode=mode, segment_len=5)
    close(mc(q, k, v, u, memory, opts, variant="ssc", mode=mode, segment_len=5, top_k=8), grm)
    close(mc(q, k, v, u, memory, opts, variant="ssc", mode=mode, segment_len=5, top_k=100), grm)
    ssc = mc(q, k, v, u, memory, opts, variant="ssc", mode=mode, segment_len=5, top_k=2)
    assert (ssc - grm).abs().max() > 1e-4


def test_ssc_router_and_gates():
    q, k, v, u, _ = inputs("linear", T=40)
    o, info = mc(q, k, v, u, variant="ssc", segment_len=5, top_k=3, return_info=True)
    g, sel = info["gates"], info["selected"]                            # [B, T, H, 9], [B, T, H, 3]
    N = len(info["bounds"])
    assert g.shape == (2, 40, 2, N + 1) and sel.shape == (2, 40, 2, 3)
    close(g.sum(-1), torch.ones_like(g[..., 0]))
    seg = torch.arange(40) // 5
    for t in range(40):
        s = seg[t].item()
        chosen = sel[:, t][sel[:, t] >= 0]
        assert (sel[:, t] >= 0).sum(-1).eq(min(3, s)).all()              # min(k, #completed) chosen
        assert (chosen < s).all()                                          # only completed segments
        nonzero = (g[:, t, :, :N] > 0).sum(-1)
        assert nonzero.eq(min(3, s)).all()                          # gates vanish off the selection
    # the selected segments are the top-k scores: recompute the scores independently
    kbar = k.reshape(2, 8, 5, 2, 8).mean(2)                                 # [B, N, H, K]
    scores = torch.einsum("bthk,bnhk->bthn", u, kbar) * 8 ** -0.5
    t = 37                                                                  # segment 7: 7 completed
    top = scores[:, t, :, :7].topk(3, -1).indices.sort(-1).values
    assert torch.equal(sel[:, t].sort(-1).values, top)


def test_grm_gates_are_a_causal_softmax():
    q, k, v, u, _ = inputs("linear", T=40)
    _, info = mc(q, k, v, u, variant="grm", segment_len=5, return_info=True)
    g = info["gates"]
    close(g.sum(-1), torch.ones_like(g[..., 0]))
    seg = torch.arange(40) // 5
    reads = g[..., :-1] > 0                                                 # [B, T, H, N]
    # exactly the completed ones
    assert torch.equal(reads.any(0).any(-2), seg[:, None] > torch.arange(8))
    _, info = mc(q, k, v, u, variant="residual", segment_len=5, return_info=True)
    assert set(info["gates"].unique().tolist()) == {0.0, 1.0}


class ValueMemory(Memory):
    """A memory whose readout returns the value it last stored, whatever the query (§4.1)."""

    def init_state(self, q, k, v):
        return (torch.zeros_like(v[:, 0]),)                                 # [B, H, V]

    def step(self, state, k, v):
        return (v,)

    def read(self, stack, q):
        return stack[0][:, None].expand(-1, q.shape[1], -1, -1, -1)         # [B, T, H, N, V]

    def read_each(self, stack, q):
        return stack[0].transpose(1, 2)                                     # [B, T, H, V]


def test_segment_length_one_is_softmax_attention(monkeypatch):
    """Eq. 19-20: segment length 1, independent, value-returning memory, GRM gates =
    attention(u, k, v)."""
    monkeypatch.setitem(REGISTRY, "value", ValueMemory)
    q, k, v, u, _ = inputs("linear", T=33)
    o = mc(q, k, v, u, "value", variant="grm", segment_len=1, mode="independent")
    att = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (u, k, v)),
                                                           is_causal=True)
    close(o, att.transpose(1, 2))


@pytest.mark.parametrize("mode", MODES)
def test_cached_states_are_segment_end_states(mode):
    q, k, v, u, opts = inputs("delta", T=30)
    _, info = mc(q, k, v, u, "delta", opts, segment_len=8, mode=mode, return_info=True)
    for i, (a, b) in enumerate(info["bounds"]):
        start = 0 if mode == "checkpoint" else a
        _, (S,) = minimc.recurrent_memory(q[:, start:b], k[:, start:b], v[:, start:b], "delta",
                                          beta=opts["beta"][:, start:b])
        close(info["states"][0][:, :, i], S)


CASES = [(m, var) for m in MEMORIES for var in VARIANTS]


@pytest.mark.parametrize("segmentation", ["constant", "log"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("memory,variant", CASES)
def test_streaming_equals_whole_sequence(memory, variant, mode, segmentation):
    T = 27
    q, k, v, u, opts = inputs(memory, T=T)
    kw = dict(memory=memory, variant=variant, segment_len=4, segmentation=segmentation, mode=mode,
              top_k=2)
    whole = mc(q, k, v, u, opts=opts, **kw)
    per_token = {n: x for n, x in opts.items() if torch.is_tensor(x) and x.dim() == 3}
    settings = {n: x for n, x in opts.items() if n not in per_token}
    stream = minimc.CachingStream(seq_len=T, **kw, **settings,
                                  **({"chunk_size": 1} if memory in DEEP else {}))
    steps = [stream.step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], u[:, t:t + 1],
                         **{n: x[:, t:t + 1] for n, x in per_token.items()}) for t in range(T)]
    close(torch.cat(steps, 1), whole)


@pytest.mark.parametrize("segmentation", ["constant", "log"])
@pytest.mark.parametrize("memory,variant", CASES)
def test_causality(memory, variant, segmentation):
    T, t0 = 30, 13
    q, k, v, u, opts = inputs(memory, T=T)
    kw = dict(variant=variant, segment_len=4, segmentation=segmentation, top_k=2)
    before = mc(q, k, v, u, memory, opts, **kw)

    def later(x):
        return torch.cat([x[:, :t0 + 1], x[:, t0 + 1:] + torch.randn_like(x[:, t0 + 1:])], 1)

    def shuffle(x):                                         # per-token scalars stay in range
        return torch.cat([x[:, :t0 + 1], x[:, t0 + 1:].flip(1)], 1)

    # deep: unit keys
    k2 = torch.nn.functional.normalize(later(k), dim=-1) if memory in DEEP else later(k)
    after = mc(later(q), k2, later(v), later(u), memory,
               {n: (shuffle(x) if torch.is_tensor(x) and x.dim() == 3 else x)
                for n, x in opts.items()}, **kw)
    close(after[:, :t0 + 1], before[:, :t0 + 1])
    assert (after[:, t0 + 1:] - before[:, t0 + 1:]).abs().max() > 1e-3   # the perturbation was real


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("memory", ["linear", "titans"])
def test_gradcheck(memory, variant):
    q, k, v, u, opts = inputs(memory, B=1, T=7, H=1, K=3, requires_grad=True)

    def f(q, k, v, u):
        return mc(q, k, v, u, memory, opts, variant=variant, segment_len=2, top_k=2)

    assert torch.autograd.gradcheck(f, (q, k, v, u))


def test_gradients_flow_through_cached_states_and_gates():
    q, k, v, u, _ = inputs("linear", T=20, requires_grad=True)
    o = mc(q, k, v, u, variant="grm", segment_len=5)
    o[:, -1].sum().backward()
    assert k.grad[:, :5].abs().sum() > 0                     # through the cached state of segment 0
    assert u.grad[:, -1].abs().sum() > 0                                    # through the gates


@pytest.mark.parametrize("variant", ["grm", "ssc"])
def test_pool_sum_is_the_papers_literal_gate(variant):
    q, k, v, u, _ = inputs("linear", T=24)
    _, info = mc(q, k, v, u, variant=variant, segment_len=6, pool="sum", temperature=1.0, scale=1.0,
                 return_info=True)
    kbar = k.reshape(2, 4, 6, 2, 8).sum(2)                                  # sum of keys, not mean
    close(info["summaries"], kbar)
    assert not torch.allclose(mc(q, k, v, u, variant=variant, segment_len=6, pool="sum"),
                              mc(q, k, v, u, variant=variant, segment_len=6))


def test_readouts_agree_with_the_definition():
    q, k, v, u, _ = inputs("linear", T=19)
    S = torch.randn(2, 2, 4, 8, 12, dtype=torch.float64)
    g = torch.rand(2, 19, 2, 4, dtype=torch.float64)
    ref = minimc.cached_readout_reference(q, S, g)
    close(minimc.cached_readout(q, S, g), ref)
    blocks = [(0, 5, 0), (5, 10, 1), (10, 15, 2), (15, 19, 3)]
    g_causal = g * (torch.arange(19)[:, None] // 5 > torch.arange(4))[None, :, None]
    close(minimc.cached_readout(q, S, g_causal, blocks),
          minimc.cached_readout_reference(q, S, g_causal))
    sel = torch.randint(-1, 4, (2, 19, 2, 2))
    # distinct or empty slots
    sel[..., 1] = torch.where(sel[..., 1] == sel[..., 0], -1, sel[..., 1])
    gs = torch.rand(2, 19, 2, 2, dtype=torch.float64)
    dense = torch.zeros_like(g).scatter_add(-1, sel.clamp_min(0), gs * (sel >= 0))
    close(minimc.sparse_readout(q, S, gs, sel), minimc.cached_readout_reference(q, S, dense))
    for args, fn in (((q, S, g_causal), lambda *a: minimc.cached_readout(*a, blocks)),
                     ((q, S, gs), lambda q, S, gs: minimc.sparse_readout(q, S, gs, sel))):
        args = [a.clone().requires_grad_() for a in args]
        assert torch.autograd.gradcheck(fn, args)
