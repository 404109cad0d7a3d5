"""Argument checks: an error names the argument, what it got and what was expected.

A leaf module: it imports nothing from minimc. Facts about a memory (its per-token options and
their ranges) live on the memory's class and are handed to these functions.
"""
import math

import torch


def check_tensor(name, x, shape, names):
    """x: a floating tensor of rank len(names); entries of ``shape`` that are None are free."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    want = "[" + ", ".join(names) + "]"
    if x.dim() != len(names):
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)} (rank {x.dim()})")
    for axis, got, exp in zip(names, x.shape, shape):
        if exp is not None and got != exp:
            expected = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want} = {expected}, got {tuple(x.shape)} "
                             f"({axis} = {got}, expected {exp})")


def check_like(name, x, ref, ref_name="q"):
    """x must have ref's dtype and device (nothing is converted silently)."""
    if x.dtype != ref.dtype or x.device != ref.device:
        raise TypeError(f"{name} must match {ref_name}'s dtype and device ({ref.dtype}, "
                        f"{ref.device}), got ({x.dtype}, {x.device})")


def check_finite(**tensors):
    """A NaN or Inf makes the sum non-finite: one cheap reduction, the exact test only then."""
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor) or torch.isfinite(x.detach().sum()):
            continue
        if not torch.isfinite(x).all():
            first = (~torch.isfinite(x)).nonzero()[0].tolist()
            raise ValueError(f"{name} contains NaN or Inf (first at index {first}); "
                             "pass check_nan=False to skip this check")


def check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_positive_int(**named):
    """Each value: a Python or numpy integer >= 1 (not bool, not float)."""
    for name, value in named.items():
        if isinstance(value, bool) or not hasattr(value, "__index__") or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_number(name, value, positive=True):
    """A finite real number (a Python or numpy scalar), > 0 when ``positive``."""
    ok = isinstance(value, (int, float)) or hasattr(value, "__float__")
    if isinstance(value, (bool, torch.Tensor)) or not ok or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and float(value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_range(name, x, interval):
    """Every entry of x lies in ``interval``, written as in maths: "(0, 1]", "[0, inf)".
    NaN is left to ``check_finite`` (or, with check_nan=False, to propagate)."""
    lo, hi = (float(s) for s in interval[1:-1].split(","))
    too_low = x < lo if interval[0] == "[" else x <= lo
    too_high = x > hi if interval[-1] == "]" else x >= hi
    bad = too_low | too_high                                    # False for NaN
    if bad.any():
        first = bad.nonzero()[0].tolist()
        raise ValueError(f"{name} must lie in {interval}, got {x[tuple(first)].item():.4g} at "
                         f"index {first}")


def check_state(name, state, expected):
    """An initial state: a tuple of tensors with the shapes, dtype and device of ``expected``."""
    if not isinstance(state, (tuple, list)) or len(state) != len(expected):
        raise ValueError(f"{name} must be a tuple of {len(expected)} tensors shaped "
                         f"{[tuple(e.shape) for e in expected]}, got {type(state).__name__}"
                         + (f" of {len(state)}" if isinstance(state, (tuple, list)) else ""))
    for i, (s, e) in enumerate(zip(state, expected)):
        if not isinstance(s, torch.Tensor) or s.shape != e.shape:
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"{name}[{i}] must have shape {tuple(e.shape)}, got {got}")
        check_like(f"{name}[{i}]", s, e, "the memory's state")
