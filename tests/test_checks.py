"""Bad input gets a clear error naming the argument, what it got and what was expected."""
import pytest
import torch

import minimc
from _inputs import inputs


def run(q=None, k=None, v=None, u=None, **kw):
    q0, k0, v0, u0, _ = inputs("linear", T=10, dtype=torch.float32)
    return minimc.memory_caching(q0 if q is None else q, k0 if k is None else k,
                                 v0 if v is None else v, u0 if u is None else u,
                                 **{"segment_len": 4, **kw})


q, k, v, u, _ = inputs("linear", T=10, dtype=torch.float32)


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(q=q[0]), ValueError, ["q", "[B, T, H, K]", "(10, 2, 8)"]),
    (dict(k=k[:, :, :, :5]), ValueError, ["k", "K = 5", "expected 8"]),
    (dict(k=k[:, :9]), ValueError, ["k", "T = 9", "expected 10"]),
    (dict(v=v[:, :, :1]), ValueError, ["v", "H = 1", "expected 2"]),
    (dict(u=u[..., :3]), ValueError, ["u", "K = 3"]),
    (dict(q=q.long()), TypeError, ["q", "floating-point", "int64"]),
    (dict(k=k.double()), TypeError, ["k", "dtype"]),
    (dict(q=q.numpy()), TypeError, ["q", "torch.Tensor", "ndarray"]),
    (dict(segment_len=0), ValueError, ["segment_len", ">= 1", "0"]),
    (dict(segment_len=2.5), ValueError, ["segment_len", "2.5"]),
    (dict(top_k=0), ValueError, ["top_k", ">= 1"]),
    (dict(variant="gated"), ValueError, ["variant", "'gated'", "grm"]),
    (dict(memory="mamba"), ValueError, ["memory", "'mamba'", "linear"]),
    (dict(mode="restart"), ValueError, ["mode", "checkpoint", "independent"]),
    (dict(segmentation="linear"), ValueError, ["segmentation", "log"]),
    (dict(pool="max"), ValueError, ["pool", "mean", "sum"]),
    (dict(decay=torch.rand(2, 10)), ValueError, ["decay", "[B, T, H]"]),
    (dict(decay=torch.rand(2, 10, 1)), ValueError, ["decay", "H = 1", "expected 2"]),
    (dict(memory="linear", beta=torch.rand(2, 10, 2)), ValueError, ["beta", "linear", "decay"]),
    (dict(memory="titans", weights=minimc.init_deep_weights(2, 8)), ValueError, ["K == V"]),
])
def test_bad_input_names_the_argument(kwargs, error, words):
    with pytest.raises(error) as e:
        run(**kwargs)
    for w in words:
        assert w in str(e.value), f"{w!r} missing from: {e.value}"


def test_deep_memory_needs_weights_of_the_right_shape():
    q, k, v, u, opts = inputs("titans", T=6)
    with pytest.raises(ValueError, match="weights=.*init_deep_weights"):
        minimc.memory_caching(q, k, v, memory="titans")
    W1, W2 = opts["weights"]
    with pytest.raises(ValueError, match=r"weights\[1\] \(W2\)"):
        minimc.memory_caching(q, k, v, memory="titans", weights=(W1, W2[:, :, :5]))


@pytest.mark.parametrize("name", ["q", "k", "v", "u", "decay"])
def test_nan_is_caught_unless_switched_off(name):
    x = {"q": q, "k": k, "v": v, "u": u, "decay": torch.rand(2, 10, 2)}[name].clone()
    x[1, 3, 0, ...] = float("nan")
    args = {name: x} if name != "decay" else {"decay": x}
    with pytest.raises(ValueError, match=f"{name} contains NaN"):
        run(**args)
    assert torch.isnan(run(check_nan=False, **args)).any()            # the check was the only guard


def test_recurrent_memory_checks_too():
    with pytest.raises(ValueError, match="memory must be one of"):
        minimc.recurrent_memory(q, k, v, "lstm")
    with pytest.raises(ValueError, match="q must hold at least one token"):
        minimc.recurrent_memory(q[:, :0], k[:, :0], v[:, :0])
    with pytest.raises(ValueError, match="contains NaN"):
        minimc.recurrent_memory(q * float("nan"), k, v)


def test_streaming_log_segmentation_needs_the_length():
    with pytest.raises(ValueError, match="seq_len"):
        minimc.CachingStream(segmentation="log")
    with pytest.raises(ValueError, match="variant"):
        minimc.CachingStream(variant="gated")


def test_backend_is_checked():
    with pytest.raises(ValueError, match="backend"):
        run(backend="cuda")
