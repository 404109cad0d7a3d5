"""Grades chapter 10, attention as Memory Caching (exercises/ch10_attention_is_caching.py).

The oracle is a library one: torch's F.scaled_dot_product_attention with a causal mask (queries
u = x W_u, keys k = x W_K, values b_K + k, scale = the inverse temperature) times the output gate
sigmoid(x W_Q): the paper's Eq. 20. minimc has no value-less memory to compare with. Inputs are
random float64, D != K. Expected values are computed before the learner's function runs.
"""
import pytest
import torch
import torch.nn.functional as F

from grading import check_causal, check_close

CH = "ch10_attention_is_caching"
AXES = ("B", "T", "K")


def weights(B=2, T=13, D=6, K=5, seed=0, size=1.0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    x = size * r(B, T, D)
    w_u, w_k, b_k, w_q = r(D, K) / D ** 0.5, r(D, K) / D ** 0.5, r(K), r(D, K) / D ** 0.5
    return x, w_u, w_k, b_k, w_q


def oracle(x, w_u, w_k, b_k, w_q, temperature=1.0):
    """Eq. 20: causal softmax attention (u, k, b_K + k) gated by sigmoid(x W_Q); [B, T, K]."""
    u, k = x @ w_u, x @ w_k
    att = F.scaled_dot_product_attention(u, k, b_k + k, is_causal=True, scale=temperature)
    return att * torch.sigmoid(x @ w_q)


def hint(at):
    if at["T"] == 0:
        return ("token 0 reads only its own memory: y_0 = (b_K + x_0 W_K) * sigmoid(x_0 W_Q); "
                "the bias b_K is in the values, not in the keys")
    return ("a softmax over i <= t of temperature * (u_t . k_i), k_i = x_i W_K without the bias, "
            "values b_K + k_i, then times the gate sigmoid(x_t W_Q)")


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_gated_attention_matches_attention(impl, temperature):
    args = weights()
    expected = oracle(*args, temperature=temperature)
    got = impl(CH).gated_global_attention(*args, temperature=temperature)
    check_close(got, expected, f"y (temperature = {temperature})", axes=AXES, hint=hint)


def test_gated_attention_default_temperature_is_one(impl):
    args = weights(B=1, T=7, D=3, K=8, seed=1)
    expected = oracle(*args)
    check_close(impl(CH).gated_global_attention(*args), expected, "y (default temperature)",
                axes=AXES, hint=hint)


def test_gated_attention_large_scores_are_stable(impl):
    """Scores in the hundreds: exp overflows unless the softmax subtracts the row's maximum."""
    args = weights(seed=2, size=30.0)
    expected = oracle(*args)
    check_close(impl(CH).gated_global_attention(*args), expected, "y with large scores",
                axes=AXES, hint=hint)


def test_gated_attention_is_causal(impl):
    x, *w = weights(T=11, seed=3)
    expected = oracle(x, *w)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    before = impl(CH).gated_global_attention(x, *w)
    after = impl(CH).gated_global_attention(x2, *w)
    check_causal(before, after, 7, "y", "x", "a token reads the cached memories i <= t only: "
                 "mask the scores of i > t with -inf before the softmax")
    check_close(before, expected, "y", axes=AXES, hint=hint)


def test_gated_attention_worked_example(impl):
    one = torch.ones(1, 1, dtype=torch.float64)
    x = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 2, 1)
    args = (x, one, one, torch.ones(1, dtype=torch.float64), one)
    expected = oracle(*args)                                              # [0.5, 1.2655]
    check_close(impl(CH).gated_global_attention(*args), expected, "y of the worked example",
                axes=AXES, hint=hint)
