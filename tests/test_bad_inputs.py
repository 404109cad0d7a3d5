"""Every public entry point rejects bad input before computing, with an error that names the
argument, what it got and what was expected (never a deep torch error, a ZeroDivisionError, a
KeyError, or a silently wrong result)."""
import pytest
import torch

import minimc
from _inputs import inputs
from minimc.data import mqar
from minimc.layers import Attention, MemoryLayer, TinyLM, make_mixer, tiny_lm
from minimc.train import train

q, k, v, u, _ = inputs("linear", T=10, dtype=torch.float32)          # K = 8, V = 12, H = 2
B, T, H = 2, 10, 2
qd, kd, vd, ud, deep = inputs("titans", T=10, dtype=torch.float32)  # K = V = 8, unit keys
ONES = torch.ones(B, T, H)


def mc(**kw):
    args = dict(q=q, k=k, v=v, u=u, segment_len=4)
    args.update(kw)
    return minimc.memory_caching(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("u"),
                                 **args)


def titans(**kw):
    return minimc.memory_caching(qd, kd, vd, ud, memory="titans", segment_len=4,
                                 **{**deep, **kw})


CASES = {   # name: (call, error, words that must be in the message)
    # dtype and device agreement
    "decay dtype": (lambda: mc(decay=ONES.double()), TypeError, ["decay", "dtype", "float64"]),
    "u dtype": (lambda: mc(u=u.double()), TypeError, ["u", "q's dtype"]),
    "v dtype": (lambda: mc(v=v.half()), TypeError, ["v", "float16"]),
    "weights dtype": (lambda: titans(weights=tuple(w.double() for w in deep["weights"])),
                      TypeError, ["weights[0]", "float64"]),
    "delta float16": (lambda: minimc.recurrent_memory(q.half(), k.half(), v.half(), "delta"),
                      TypeError, ["DeltaMemory", "float16", ".float()"]),
    "titans float16": (lambda: minimc.recurrent_memory(
        qd.half(), kd.half(), vd.half(), "titans",
        weights=tuple(w.half() for w in deep["weights"])), TypeError, ["TitansMemory", "float16"]),
    "initial state dtype": (lambda: minimc.recurrent_memory(
        q, k, v, initial_state=(torch.zeros(B, H, 8, 12, dtype=torch.float64),)),
        TypeError, ["initial_state[0]", "float64"]),
    # value ranges of per-token options
    "decay above 1": (lambda: mc(decay=ONES * 1.5), ValueError, ["decay", "(0, 1]", "1.5"]),
    "decay zero": (lambda: mc(decay=ONES * 0), ValueError, ["decay", "(0, 1]"]),
    "beta above 1": (lambda: mc(memory="delta", beta=ONES * 2), ValueError, ["beta", "[0, 1]"]),
    "negative lr": (lambda: titans(lr=-ONES), ValueError, ["lr", "[0, inf)", "-1"]),
    "momentum 1": (lambda: titans(momentum=ONES), ValueError, ["momentum", "[0, 1)"]),
    "swla a above 1": (lambda: mc(memory="swla", a=ONES * 2), ValueError, ["a must lie in [0, 1]"]),
    "momentum to DLA": (lambda: minimc.memory_caching(
        qd, kd, vd, memory="dla", segment_len=4, weights=deep["weights"], momentum=ONES * 0.5),
        ValueError, ["dla", "momentum", "['lr']"]),
    "decay to DLA": (lambda: minimc.recurrent_memory(
        qd, kd, vd, "dla", weights=deep["weights"], decay=ONES), ValueError, ["decay", "dla"]),
    "setting typo": (lambda: mc(chunksize=8), ValueError, ["chunksize", "chunk_size"]),
    # integer settings
    "chunk_size 0": (lambda: mc(chunk_size=0), ValueError, ["chunk_size", ">= 1", "0"]),
    "chunk_size float": (lambda: minimc.recurrent_memory(q, k, v, chunk_size=2.0), ValueError,
                         ["chunk_size", "2.0"]),
    "segment_len float": (lambda: mc(segment_len=2.5), ValueError, ["segment_len", "2.5"]),
    "top_k 0": (lambda: mc(variant="ssc", top_k=0), ValueError, ["top_k", ">= 1"]),
    "T 0": (lambda: minimc.segment_bounds(0, 4), ValueError, ["T", ">= 1"]),
    # numbers
    "temperature NaN": (lambda: mc(temperature=float("nan")), ValueError, ["temperature", "nan"]),
    "scale inf": (lambda: mc(scale=float("inf")), ValueError, ["scale", "inf"]),
    "scale 0": (lambda: mc(scale=0.0), ValueError, ["scale", "> 0"]),
    "temperature tensor": (lambda: mc(temperature=torch.tensor(1.0)), ValueError,
                           ["temperature", "finite number"]),
    # NaN
    "deep weights NaN": (lambda: titans(weights=(deep["weights"][0] * float("nan"),
                                                 deep["weights"][1])), ValueError, ["W1", "NaN"]),
    # initial states
    "initial state structure": (lambda: minimc.recurrent_memory(
        q, k, v, "swla", initial_state=(torch.zeros(B, H, 8, 12),)), ValueError,
        ["initial_state", "3 tensors", "of 1"]),
    "initial state shape": (lambda: minimc.recurrent_memory(
        q, k, v, initial_state=(torch.zeros(B, H, 12, 8),)), ValueError,
        ["initial_state[0]", "(2, 2, 8, 12)", "(2, 2, 12, 8)"]),
    "initial state not a tuple": (lambda: minimc.recurrent_memory(
        q, k, v, initial_state=torch.zeros(B, H, 8, 12)), ValueError, ["initial_state", "tuple"]),
    # unknown names
    "unknown variant": (lambda: mc(variant="gated"), ValueError, ["variant", "'gated'", "grm"]),
    "unknown backend": (lambda: mc(backend="cuda"), ValueError, ["backend", "'cuda'", "triton"]),
    "gate variant": (lambda: minimc.gate(torch.zeros(1, 2), torch.zeros(1),
                                         torch.ones(1, 2, dtype=torch.bool), "gated", 2),
                     ValueError, ["variant", "'gated'"]),
    "unknown mixer": (lambda: make_mixer(32, "mamba"), ValueError, ["mixer", "'mamba'", "titans"]),
    "unknown preset": (lambda: tiny_lm("mamba"), ValueError, ["preset", "'mamba'", "linear-grm"]),
    "unknown memory": (lambda: MemoryLayer(32, memory="lstm"), ValueError, ["memory", "'lstm'"]),
    "caching typo": (lambda: MemoryLayer(32, caching=dict(variant="grm", segment=8)), ValueError,
                     ["segment", "segment_len"]),
    "decay for delta": (lambda: MemoryLayer(32, memory="delta", decay=True), ValueError,
                        ["decay=True", "delta"]),
    # backend for every variant
    "triton soup": (lambda: mc(variant="soup", backend="triton"), ValueError,
                    ["backend='triton'", "soup", "backend='torch'"]),
    "triton deep": (lambda: titans(variant="grm", backend="triton"), ValueError,
                    ["backend='triton'", "TitansMemory"]),
    "triton float64": (lambda: mc(q=q.double(), k=k.double(), v=v.double(), u=u.double(),
                                  backend="triton"), TypeError, ["float32 or float16"]),
    # readouts: shapes, indices, NaN
    "readout gates shape": (lambda: minimc.cached_readout(q, torch.zeros(B, H, 3, 8, 12),
                                                          torch.zeros(B, T, H, 4)),
                            ValueError, ["gates", "N = 4", "expected 3"]),
    "readout gates NaN": (lambda: minimc.cached_readout(
        q, torch.zeros(B, H, 3, 8, 12), torch.full((B, T, H, 3), float("nan"))), ValueError,
        ["gates", "NaN"]),
    "readout blocks": (lambda: minimc.cached_readout(q, torch.zeros(B, H, 3, 8, 12),
                                                     torch.zeros(B, T, H, 3), blocks=[(0, 11, 2)]),
                       ValueError, ["blocks", "T = 10"]),
    "sparse index N": (lambda: minimc.sparse_readout(q, torch.zeros(B, H, 3, 8, 12),
                                                     torch.ones(B, T, H, 2),
                                                     torch.full((B, T, H, 2), 3)),
                       ValueError, ["selected", "[-1, 3)", "3"]),
    "sparse index -2": (lambda: minimc.sparse_readout(q, torch.zeros(B, H, 3, 8, 12),
                                                      torch.ones(B, T, H, 2),
                                                      torch.full((B, T, H, 2), -2)),
                        ValueError, ["selected", "-2"]),
    "sparse index float": (lambda: minimc.sparse_readout(q, torch.zeros(B, H, 3, 8, 12),
                                                         torch.ones(B, T, H, 2),
                                                         torch.zeros(B, T, H, 2)),
                           TypeError, ["selected", "int64", "float32"]),
    # layers and the model
    "layer head_dim 0": (lambda: MemoryLayer(32, head_dim=0), ValueError, ["head_dim", ">= 1"]),
    "layer n_heads float": (lambda: Attention(32, n_heads=2.0), ValueError, ["n_heads", "2.0"]),
    "layer expansion 0": (lambda: MemoryLayer(32, memory="dla", expansion=0), ValueError,
                          ["expansion"]),
    "layer input width": (lambda: MemoryLayer(32)(torch.randn(2, 5, 16)), ValueError,
                          ["x", "D = d_model = 32", "(2, 5, 16)"]),
    "layer input rank": (lambda: Attention(32)(torch.randn(5, 32)), ValueError, ["x", "[B, T, D]"]),
    "model ids float": (lambda: TinyLM(16)(torch.zeros(2, 5)), TypeError, ["ids", "integer"]),
    "model ids range": (lambda: TinyLM(16)(torch.full((2, 5), 16)), ValueError,
                        ["ids", "[0, 16)", "16"]),
    "model targets shape": (lambda: TinyLM(16)(torch.zeros(2, 5, dtype=torch.long),
                                               torch.zeros(2, 4, dtype=torch.long)), ValueError,
                            ["targets", "(2, 5)"]),
    "model vocab 0": (lambda: TinyLM(0), ValueError, ["vocab_size"]),
    # data and training
    "mqar seq_len": (lambda: mqar(4, seq_len=0), ValueError, ["seq_len", ">= 1"]),
    "mqar seed": (lambda: mqar(4, seed=-1), ValueError, ["seed", ">= 0"]),
    "train steps": (lambda: train(steps=0), ValueError, ["steps", ">= 1"]),
    "train batch_size": (lambda: train(batch_size=2.5), ValueError, ["batch_size", "2.5"]),
    "train log_every": (lambda: train(log_every=0), ValueError, ["log_every"]),
    "train eval_n": (lambda: train(eval_n=0), ValueError, ["eval_n"]),
    "train lr": (lambda: train(lr=float("nan")), ValueError, ["lr", "nan"]),
    "train model": (lambda: train(model=3), TypeError, ["model", "int"]),
    "train preset": (lambda: train("mamba", steps=1), ValueError, ["preset", "'mamba'"]),
    "train head_dim": (lambda: train("linear", steps=1, head_dim=0), ValueError, ["head_dim"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_rejected_with_a_clear_message(case):
    call, error, words = CASES[case]
    with pytest.raises(error) as e:
        call()
    for w in words:
        assert w in str(e.value), f"{w!r} missing from: {e.value}"


# ---- CachingStream: validated like the whole-sequence call --------------------------------------

def stream_step(stream, t=0, **kw):
    x = dict(q=q[:, t:t + 1], k=k[:, t:t + 1], v=v[:, t:t + 1])
    x.update(kw)
    return stream.step(x.pop("q"), x.pop("k"), x.pop("v"), **x)


STREAM_CASES = {
    "rank": (lambda s: s.step(q[:, 0], k[:, 0], v[:, 0]), ValueError, ["q", "rank 3"]),
    "two tokens": (lambda s: s.step(q[:, :2], k[:, :2], v[:, :2]), ValueError, ["q", "T=1 = 2"]),
    "NaN": (lambda s: stream_step(s, q=q[:, :1] * float("nan")), ValueError, ["q", "NaN"]),
    "per-token shape": (lambda s: stream_step(s, decay=torch.ones(B, 2, H)), ValueError,
                        ["decay", "[B, T, H]"]),
    "per-token range": (lambda s: stream_step(s, decay=torch.ones(B, 1, H) * 2), ValueError,
                        ["decay", "(0, 1]"]),
    "unknown option": (lambda s: stream_step(s, beta=torch.ones(B, 1, H)), ValueError,
                       ["beta", "decay"]),
}


@pytest.mark.parametrize("case", STREAM_CASES)
def test_stream_rejects_bad_steps(case):
    call, error, words = STREAM_CASES[case]
    with pytest.raises(error) as e:
        call(minimc.CachingStream(segment_len=4))
    for w in words:
        assert w in str(e.value), f"{w!r} missing from: {e.value}"


@pytest.mark.parametrize("change", ["B", "H", "K"])
def test_stream_rejects_a_change_of_shape_between_steps(change):
    s = minimc.CachingStream(segment_len=4)
    stream_step(s)
    x = {"B": q[:1, 1:2], "H": q[:, 1:2, :1], "K": q[:, 1:2, :, :4]}[change]
    with pytest.raises(ValueError, match="first step's shape"):
        s.step(x, x, x)


def test_stream_length_checks():
    with pytest.raises(ValueError, match="seq_len must be an integer >= 1, got 0"):
        minimc.CachingStream(segmentation="log", seq_len=0)
    with pytest.raises(ValueError, match="pass seq_len"):
        minimc.CachingStream(segmentation="log")
    s = minimc.CachingStream(segmentation="log", seq_len=3)
    for t in range(3):
        stream_step(s, t)
    with pytest.raises(ValueError, match="seq_len = 3 tokens; step 4 is past its end"):
        stream_step(s, 3)
    with pytest.raises(ValueError, match="per-token options.*step"):
        minimc.CachingStream(decay=ONES)


def test_nan_propagates_when_checks_are_off():
    """With check_nan=False a NaN is never turned into a finite wrong answer."""
    S, g = torch.randn(B, H, 3, 8, 12), torch.rand(B, T, H, 3)
    g[0, 4, 1, 2] = float("nan")
    o = minimc.cached_readout(q, S, g, check_nan=False)
    assert torch.isnan(o[0, 4, 1]).all() and torch.isfinite(o[1]).all()
    sel = torch.zeros(B, T, H, 1, dtype=torch.long)
    o = minimc.sparse_readout(q, S, g[..., :1], sel, check_nan=False)
    assert torch.isfinite(o).all()                          # the NaN gate was not selected
    o = minimc.sparse_readout(q, S, g[..., 2:], sel + 2, check_nan=False)
    assert torch.isnan(o[0, 4, 1]).all()
