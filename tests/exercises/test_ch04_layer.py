"""Grades chapter 4, a memory as a layer (exercises/ch04_layer.py).

minimc is the oracle: minimc.layers.MemoryLayer(D, H, K, memory, conv=W) without caching, in
float64, with every parameter randomised (the RMSNorm weight too, so a missing one shows) and
handed to the learner's function. Expected values are computed before the learner's call.
"""
import pytest
import torch

from grading import check_causal, check_close
from minimc.layers import MemoryLayer

CH = "ch04_layer"
AXES = ("B", "T", "D")


def layer_and_input(memory="linear", B=2, T=13, D=12, H=2, K=4, W=4, seed=0):
    torch.manual_seed(seed)
    layer = MemoryLayer(D, n_heads=H, head_dim=K, memory=memory, conv=W).double()
    with torch.no_grad():
        for p in layer.parameters():  # nothing at its init value
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(B, T, D, dtype=torch.float64)
    return layer, x


def params(layer):
    """The layer's parameters as the learner's function takes them (detached copies)."""
    out = dict(w_qkv=layer.qkv.weight, w_conv=layer.conv.weight, w_out=layer.out.weight,
               norm_weight=layer.norm.weight)
    if layer.scalar_proj is not None:
        out.update(w_beta=layer.scalar_proj.weight, b_beta=layer.scalar_proj.bias)
    return {k: v.detach().clone() for k, v in out.items()}


def oracle(layer, x):
    with torch.no_grad():
        return layer(x)                                                    # [B, T, D]


def hint(at):
    if at["T"] == 0:
        return ("token 0: projections (x @ w.T), the q/k/v split (reshape(B, T, 3, H, K)), the "
                "feature map, the RMSNorm, the output projection, or a convolution that looks "
                "ahead?")
    return ("token 0 is right, a later one is not: the short convolution? c_t = sum_j w_conv[j] "
            "h_(t-j), with w_conv[0] on the current token and zeros before the start")


@pytest.mark.parametrize("memory", ["linear", "delta"])
def test_layer_forward_matches_minimc(impl, memory):
    layer, x = layer_and_input(memory)
    expected = oracle(layer, x)
    got = impl(CH).memory_layer_forward(x, n_heads=2, memory=memory, **params(layer))
    check_close(got, expected, f"the {memory} layer's output y", axes=AXES, hint=hint)


def test_layer_forward_other_sizes(impl):
    """Three heads of 8, a convolution of width 2, one sequence of 5 tokens."""
    layer, x = layer_and_input("linear", B=1, T=5, D=10, H=3, K=8, W=2, seed=1)
    expected = oracle(layer, x)
    got = impl(CH).memory_layer_forward(x, n_heads=3, memory="linear", **params(layer))
    check_close(got, expected, "the layer's output y (H = 3, K = 8, W = 2)", axes=AXES, hint=hint)


def test_layer_forward_is_causal(impl):
    layer, x = layer_and_input("delta", T=11, seed=2)
    expected = oracle(layer, x)
    x2 = x.clone()
    x2[:, 6:] = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    p = params(layer)
    before = impl(CH).memory_layer_forward(x, n_heads=2, memory="delta", **p)
    after = impl(CH).memory_layer_forward(x2, n_heads=2, memory="delta", **p)
    check_causal(before, after, 6, "the layer's output y", "x",
                 "the short convolution must look back (h_(t-j), j >= 0), never ahead")
    check_close(before, expected, "the layer's output y", axes=AXES, hint=hint)
