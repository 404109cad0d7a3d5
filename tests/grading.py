"""Comparisons that explain themselves: what a learner sees when an exercise test fails.

    from grading import check_close
    check_close(got, expected, "output")            # tensors, numbers, or tuples/lists of them

A failure says what is wrong in one line: wrong type, wrong shape (got vs expected), NaN, or the
max |difference|, where it is, the first mismatching position and how many entries are off.
(The learner's function raising NotImplementedError is reported by conftest.py as
"not implemented yet: <name>", any other exception as "your code raised ...".)
"""
import math

import torch

__all__ = ["GradingError", "check_close", "check_true"]


class GradingError(AssertionError):
    """A failed check, with a message written for the learner."""


def _fail(msg):
    raise GradingError(msg)


def _pos(flat_index, shape):
    idx = []
    for n in reversed(shape):
        idx.append(flat_index % n)
        flat_index //= n
    return tuple(reversed(idx))


def _fmt(x):
    return f"{x:.4g}"


def check_close(got, expected, what="output", atol=1e-5, rtol=1e-4):
    """Pass when ``got`` matches ``expected`` within ``|got - exp| <= atol + rtol * |exp|``.

    Returns "exact" or "close". ``expected`` may be a tensor, a number, or a tuple/list/dict of
    those (compared entry by entry, the message names the entry, e.g. "output[1]").
    """
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            _fail(f"{what} should be a dict, got {type(got).__name__}")
        if set(got) != set(expected):
            _fail(f"{what} should have keys {sorted(expected)}, got {sorted(got)}")
        verdicts = [check_close(got[k], expected[k], f"{what}[{k!r}]", atol, rtol) for k in expected]
        return "exact" if all(v == "exact" for v in verdicts) else "close"
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            _fail(f"{what} should be a {type(expected).__name__} of {len(expected)} items, "
                  f"got {type(got).__name__}")
        if len(got) != len(expected):
            _fail(f"{what} should have {len(expected)} items, got {len(got)}")
        verdicts = [check_close(g, e, f"{what}[{i}]", atol, rtol)
                    for i, (g, e) in enumerate(zip(got, expected))]
        return "exact" if all(v == "exact" for v in verdicts) else "close"
    if not isinstance(expected, torch.Tensor):                       # a plain number
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float, bool)):
            _fail(f"{what} should be a number, got {type(got).__name__}")
        if got == expected:
            return "exact"
        if math.isclose(got, expected, rel_tol=rtol, abs_tol=atol):
            return "close"
        _fail(f"{what} is wrong: got {_fmt(got)}, expected {_fmt(expected)}")
    if not isinstance(got, torch.Tensor):
        kind = f"tuple of {len(got)}" if isinstance(got, tuple) else type(got).__name__
        _fail(f"{what} should be a torch.Tensor of shape {tuple(expected.shape)}, got a {kind}")
    if tuple(got.shape) != tuple(expected.shape):
        hint = ""
        if sorted(got.shape) == sorted(expected.shape):
            hint = " (same sizes in another order: a transpose or permute?)"
        _fail(f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}{hint}")
    if expected.is_floating_point() and not (got.is_floating_point() or got.is_complex()):
        _fail(f"{what} has dtype {got.dtype}, expected a floating-point tensor ({expected.dtype})")
    g = got.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if e.numel() == 0 or torch.equal(g, e):
        return "exact"
    bad_nan = torch.isnan(g) & ~torch.isnan(e)
    if bad_nan.any():
        first = _pos(int(bad_nan.flatten().nonzero()[0]), g.shape)
        _fail(f"{what} contains NaN ({int(bad_nan.sum())} entries, first at {first}) where "
              f"the expected values are finite")
    diff = (g - e).abs().nan_to_num(0.0)
    wrong = diff > atol + rtol * e.abs().nan_to_num(0.0)
    if not wrong.any():
        return "close"
    n_wrong, worst = int(wrong.sum()), int(diff.flatten().argmax())
    first = _pos(int(wrong.flatten().nonzero()[0]), g.shape)
    worst_pos = _pos(worst, g.shape)
    msg = (f"{what} is wrong: max |difference| {_fmt(diff.max().item())} at {worst_pos} "
           f"(got {_fmt(g.flatten()[worst].item())}, expected {_fmt(e.flatten()[worst].item())})"
           f"\n  {n_wrong} of {g.numel()} entries off, the first at {first}")
    hints = []
    if not g.any():
        hints.append("your output is all zeros")
    elif torch.allclose(g, -e, atol=atol, rtol=rtol):
        hints.append("it is the expected value with the opposite sign")
    else:
        ratio = (g.flatten() @ e.flatten()) / (e.flatten() @ e.flatten()).clamp_min(1e-300)
        if torch.allclose(g, ratio * e, atol=atol, rtol=rtol):
            hints.append(f"it is the expected value times {_fmt(ratio.item())} (a scale factor?)")
    if diff.max() <= 100 * (atol + rtol * e.abs().max()):
        hints.append("close, but not within tolerance: check dtypes (float32 vs float64) and "
                     "the order of operations")
    _fail(msg + (f"; hint: {'; '.join(hints)}" if hints else ""))


def check_true(condition, message):
    """``assert condition`` with a learner-facing message (e.g. a property of the result)."""
    if not condition:
        _fail(message)
    return "exact"
