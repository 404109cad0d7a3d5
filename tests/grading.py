"""Grading helpers: call the learner's function safely, and compare in words a learner can use.

    from grading import call_learner, check_close
    expected = oracle(q, k, v)                          # minimc, on the pristine inputs, FIRST
    got = call_learner(ex.linear_attention_recurrent, q, k, v)
    check_close(got, expected, "output o", axes=("B", "T", "H", "V"), hint=chunk_hint(16))

``call_learner`` (used for every learner call: the ``impl`` fixture of conftest.py wraps each
function of the learner's module with it) guards the grader against the learner's code:
  * the learner gets CLONES of every tensor argument (also inside tuples, lists and dicts), so
    the oracle and the test never see inputs the learner changed;
  * afterwards the clones are compared with the originals. Policy: a function that modifies an
    input in place FAILS, naming the input ("your function modified its input `q` in place"),
    even when its output is right: a caller's tensors must not change behind its back (in a
    model they are activations autograd still needs);
  * a function that returns None fails with "<name> returned None (did you forget `return`?)";
  * a function that does not return within ``LIMIT`` seconds (an endless loop) is stopped with
    ``LearnerTimeout`` naming it, and every later call of that function in the same run is
    skipped at once ("not run: `f` did not return within 10 s in an earlier test"), so a chapter
    of endless loops costs about ``LIMIT`` seconds per function, not a minute per test.

``check_close`` says what is wrong in one or two lines: wrong type, shape or dtype, NaN, or
where the first difference is, in named axes ("first difference at token t = 16") with a hint
from the test ("the first token of chunk 1: is the inter-chunk term missing?").
(conftest.py reports the learner's NotImplementedError as "not implemented yet: <name>" and any
other exception as "<name> raised ...", pointing at the learner's own file only.)
"""
import contextlib
import inspect
import math
import os
import signal
import threading
import time

import pytest
import torch

__all__ = ["GradingError", "LearnerTimeout", "LIMIT", "call_learner", "time_limit", "check_close",
           "check_true", "check_causal", "TIMED_OUT"]

LIMIT = float(os.environ.get("MINIMC_CALL_TIMEOUT", 10))   # seconds one learner call may take
TIMED_OUT = {}                                             # function name -> its limit (s)
SKIP_PREFIX = "not run: "                                  # scripts/grade.py counts these as failed


class GradingError(AssertionError):
    """A failed check, with a message written for the learner."""


class LearnerTimeout(GradingError):
    """The learner's function did not return within its time limit."""


def _fail(msg):
    raise GradingError(msg)


# ---- calling the learner ---------------------------------------------------------------------

@contextlib.contextmanager
def time_limit(name, seconds=None):
    """Raise LearnerTimeout naming ``name`` when the block runs longer than ``seconds``.

    Uses SIGALRM (main thread only; elsewhere the block runs without a limit). An outer timer
    already running (pytest-timeout's signal method) keeps working: it is re-armed afterwards
    with the time it had left, and fires as usual if it is due first."""
    seconds = LIMIT if seconds is None else float(seconds)
    if name in TIMED_OUT:
        pytest.skip(f"{SKIP_PREFIX}`{name}` did not return within {TIMED_OUT[name]:g} s in an "
                    "earlier test (an endless loop?)")
    if (seconds <= 0 or not hasattr(signal, "SIGALRM")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    start = time.monotonic()
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    outer_handler = signal.getsignal(signal.SIGALRM)
    mine_first = outer_delay == 0 or seconds < outer_delay

    def handler(signum, frame):
        if mine_first:
            TIMED_OUT[name] = seconds
            raise LearnerTimeout(f"`{name}` did not return within {seconds:g} s: an endless loop?")
        signal.signal(signal.SIGALRM, outer_handler)            # the outer timer is due: its turn
        if callable(outer_handler):
            outer_handler(signum, frame)

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds if mine_first else outer_delay)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_delay > 0:                                     # re-arm the outer timer
            left = outer_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), outer_interval)


def _clone(x):
    """A deep copy of every tensor in x (tuples, lists, dicts followed); other values as they are.
    Tensors that require grad are cloned inside the graph, so gradients still reach the caller's."""
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, tuple) and hasattr(x, "_fields"):                      # namedtuple
        return type(x)(*map(_clone, x))
    if isinstance(x, (tuple, list)):
        return type(x)(_clone(v) for v in x)
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    return x


def _changed(original, given, name):
    """Names (e.g. "state[0]") of the tensors in ``given`` that no longer equal ``original``."""
    if isinstance(original, torch.Tensor):
        if not isinstance(given, torch.Tensor) or given.shape != original.shape:
            return [name]
        a, b = original.detach(), given.detach()
        same = (a == b) | (a != a) & (b != b)                                   # NaN == NaN here
        return [] if bool(same.all()) else [name]
    if isinstance(original, (tuple, list)):
        if not isinstance(given, (tuple, list)) or len(given) != len(original):
            return [name]
        return [n for i, (o, g) in enumerate(zip(original, given))
                for n in _changed(o, g, f"{name}[{i}]")]
    if isinstance(original, dict):
        if not isinstance(given, dict) or set(given) != set(original):
            return [name]
        return [n for k in original for n in _changed(original[k], given[k], f"{name}[{k!r}]")]
    return []


def _argument_names(fn, args, kwargs):
    """{name: value} for the call, with the function's own parameter names where possible."""
    try:
        return dict(inspect.signature(fn).bind_partial(*args, **kwargs).arguments)
    except (TypeError, ValueError):
        return {**{f"argument {i + 1}": a for i, a in enumerate(args)}, **kwargs}


def call_learner(fn, /, *args, _name=None, _limit=None, **kwargs):
    """``fn(*args, **kwargs)`` on clones of the inputs, within a time limit; see the module doc.

    _name: the name to report (default fn.__name__); _limit: seconds (default LIMIT)."""
    name = _name or getattr(fn, "__name__", "your function")
    c_args, c_kwargs = _clone(args), _clone(kwargs)
    try:
        with time_limit(name, _limit):
            result = fn(*c_args, **c_kwargs)
    except (NotImplementedError, GradingError, pytest.skip.Exception):
        raise
    except Exception as exc:                                  # conftest.py names the function
        exc.__minimc_function__ = name
        raise
    originals = _argument_names(fn, args, kwargs)
    given = _argument_names(fn, c_args, c_kwargs)
    changed = [n for key, value in originals.items() for n in _changed(value, given[key], key)]
    if changed:
        which = ", ".join(f"`{n}`" for n in changed)
        _fail(f"your function {name} modified its input{'s' if len(changed) > 1 else ''} {which} "
              f"in place (e.g. `x *= s`, `x.mul_(s)`, `x[...] = ...`): leave the caller's tensors "
              f"as they are and work on new ones (`x = x * s`)")
    if result is None:
        _fail(f"{name} returned None (did you forget `return`?)")
    return result


# ---- comparing results -----------------------------------------------------------------------

_AXIS = {"B": "b", "T": "t", "H": "h", "K": "k", "V": "v", "N": "i", "E": "e", "D": "d", "C": "c"}


def _pos(flat_index, shape):
    idx = []
    for n in reversed(shape):
        idx.append(flat_index % n)
        flat_index //= n
    return tuple(reversed(idx))


def _fmt(x):
    return f"{x:.4g}"


def _where(pos, axes):
    """(1, 2, 3) or, with axes, "(b=1, t=2, h=3)"."""
    if not axes:
        return str(pos)
    return "(" + ", ".join(f"{_AXIS.get(a, a.lower())}={i}" for a, i in zip(axes, pos)) + ")"


def _first_wrong(wrong, axes):
    """Position of the first wrong entry: the earliest token when there is a T axis."""
    if axes and "T" in axes:
        t_dim = list(axes).index("T")
        moved = wrong.movedim(t_dim, 0)
        pos = list(_pos(int(moved.flatten().nonzero()[0]), moved.shape))
        pos.insert(t_dim, pos.pop(0))
        return tuple(pos)
    return _pos(int(wrong.flatten().nonzero()[0]), wrong.shape)


def _parts(expected, what, parts, axes):
    """(name, axes) for each item of a tuple/list ``expected``."""
    n = len(expected)
    names = list(parts) if parts else [f"{what}[{i}]" for i in range(n)]
    if parts and what:
        names = [f"{what} {p}" for p in parts]
    if axes and isinstance(axes[0], (tuple, list, type(None))):
        per = list(axes)
    else:
        per = [axes] * n
    return list(zip(names, per))


def check_close(got, expected, what="output", atol=1e-5, rtol=1e-4, *, axes=None, hint=None,
                parts=None, dtype=True):
    """Pass when ``got`` matches ``expected`` within ``|got - exp| <= atol + rtol * |exp|``.

    Returns "exact" or "close". ``expected``: a tensor, a number, or a tuple/list/dict of those
    (compared entry by entry; ``parts`` names the items of a tuple, e.g. ("W1", "W2"), else the
    message says "output[1]").
    axes:  one name per dimension, e.g. ("B", "T", "H", "V") (a tuple of such per item for a
           tuple); the message then says "first difference at token t = 16 (b=0, h=1, v=2)".
    hint:  ``hint(at) -> str or None``, ``at`` = {axis name: index} of the first wrong entry:
           a domain hint ("the first token of chunk 1: is the inter-chunk term missing?").
    dtype: check that a floating-point result has expected's dtype (float64 in, float64 out).
    """
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            _fail(f"{what} should be a dict, got {type(got).__name__}")
        if set(got) != set(expected):
            _fail(f"{what} should have keys {sorted(expected)}, got {sorted(got)}")
        verdicts = [check_close(got[k], expected[k], f"{what}[{k!r}]", atol, rtol, axes=axes,
                                hint=hint, dtype=dtype) for k in expected]
        return "exact" if all(v == "exact" for v in verdicts) else "close"
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            _fail(f"{what} should be a {type(expected).__name__} of {len(expected)} items"
                  f"{' (' + ', '.join(parts) + ')' if parts else ''}, got {type(got).__name__}")
        if len(got) != len(expected):
            _fail(f"{what} should have {len(expected)} items"
                  f"{' (' + ', '.join(parts) + ')' if parts else ''}, got {len(got)}")
        verdicts = [check_close(g, e, name, atol, rtol, axes=ax, hint=hint, dtype=dtype)
                    for g, e, (name, ax) in zip(got, expected, _parts(expected, what, parts, axes))]
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
    named = f" [{', '.join(axes)}]" if axes else ""
    if not isinstance(got, torch.Tensor):
        kind = f"tuple of {len(got)}" if isinstance(got, tuple) else type(got).__name__
        _fail(f"{what} should be a torch.Tensor of shape {tuple(expected.shape)}{named}, "
              f"got a {kind}")
    if tuple(got.shape) != tuple(expected.shape):
        hint_ = ""
        if sorted(got.shape) == sorted(expected.shape):
            hint_ = " (same sizes in another order: a transpose or permute?)"
        _fail(f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}{named}"
              f"{hint_}")
    if expected.is_floating_point() and not (got.is_floating_point() or got.is_complex()):
        _fail(f"{what} has dtype {got.dtype}, expected a floating-point tensor ({expected.dtype})")
    if dtype and expected.is_floating_point() and got.dtype != expected.dtype:
        _fail(f"{what} has dtype {got.dtype}, expected {expected.dtype} (the inputs' dtype: build "
              f"new tensors with dtype=x.dtype or x.new_zeros, do not hard-code a dtype)")
    g = got.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if e.numel() == 0 or torch.equal(g, e):
        return "exact"
    bad_nan = torch.isnan(g) & ~torch.isnan(e)
    if bad_nan.any():
        first = _first_wrong(bad_nan, axes)
        _fail(f"{what} contains NaN ({int(bad_nan.sum())} entries, first at "
              f"{_where(first, axes)}) where the expected values are finite")
    diff = (g - e).abs().nan_to_num(0.0)
    wrong = diff > atol + rtol * e.abs().nan_to_num(0.0)
    if not wrong.any():
        return "close"
    n_wrong, worst = int(wrong.sum()), int(diff.flatten().argmax())
    first = _first_wrong(wrong, axes)
    worst_pos = _pos(worst, g.shape)
    fg, fe = g[first].item(), e[first].item()
    if axes and "T" in axes:
        at = dict(zip(axes, first))
        rest = ", ".join(f"{_AXIS.get(a, a.lower())}={i}" for a, i in at.items() if a != "T")
        line1 = (f"{what} is wrong: first difference at token t = {at['T']} ({rest}: got "
                 f"{_fmt(fg)}, expected {_fmt(fe)})")
    else:
        line1 = (f"{what} is wrong: max |difference| {_fmt(diff.max().item())} at "
                 f"{_where(worst_pos, axes)} (got {_fmt(g.flatten()[worst].item())}, expected "
                 f"{_fmt(e.flatten()[worst].item())})")
    domain = hint(dict(zip(axes, first)) if axes else first) if hint else None
    if domain:
        line1 += f": {domain}"
    if axes and "T" in axes:
        line2 = (f"  {n_wrong} of {g.numel()} entries off; max |difference| "
                 f"{_fmt(diff.max().item())} at {_where(worst_pos, axes)}")
    else:
        line2 = f"  {n_wrong} of {g.numel()} entries off, the first at {_where(first, axes)}"
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
    _fail(line1 + "\n" + line2 + (f"; hint: {'; '.join(hints)}" if hints else ""))


def check_true(condition, message):
    """``assert condition`` with a learner-facing message (e.g. a property of the result)."""
    if not condition:
        _fail(message)
    return "exact"


def check_causal(before, after, t_changed, what="output", changed="the inputs", hint=None,
                 t_dim=1):
    """Outputs of tokens t < t_changed must not move when only inputs at t >= t_changed changed.

    before, after: the learner's outputs (tensors with a time axis ``t_dim``) on the original
    and on the changed inputs. The message names the first token that moved:
    "token t = 3 changed when only the keys at t >= 5 changed: <hint>"."""
    for name, x in (("before", before), ("after", after)):
        check_true(isinstance(x, torch.Tensor), f"{what} should be a tensor, got "
                   f"{type(x).__name__}")
    check_true(before.shape == after.shape, f"{what} changed shape when later inputs changed")
    a = before.detach().to(torch.float64).narrow(t_dim, 0, t_changed)
    b = after.detach().to(torch.float64).narrow(t_dim, 0, t_changed)
    moved = ((a - b).abs() > 1e-9 * (1 + a.abs())) | (a.isnan() != b.isnan())
    if moved.any():
        t = int(moved.movedim(t_dim, 0).flatten(1).any(1).nonzero()[0])
        _fail(f"{what} is not causal: token t = {t} changed when only {changed} at t >= "
              f"{t_changed} changed" + (f": {hint}" if hint else ""))
    return "exact"
