"""Shared pytest set-up: the Triton interpreter on CPU, the `impl` fixture, exercise diagnoses.

    pytest tests/exercises                    # grades exercises/ (default, or $MINIMC_IMPL)
    pytest tests/exercises --impl solutions   # grades solutions/
    pytest tests/exercises --impl /tmp/mine   # grades the chNN_*.py files of a folder
"""
import functools
import importlib
import importlib.util
import inspect
import json
import os
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                    # exercises/ and solutions/ are top-level packages
sys.path.insert(0, str(ROOT / "tests"))          # `from grading import check_close` in any test

# Without a GPU, importing minimc.kernel sets TRITON_INTERPRET=1 before it decorates a kernel
# (the one place that owns that rule); the exercises of chapter 11 import it first too.

from grading import call_learner  # noqa: E402  (after TRITON_INTERPRET: grading imports torch)

EXERCISE_TIMEOUT = float(os.environ.get("MINIMC_TEST_TIMEOUT", 60))   # backstop per exercise test
IMPLS = ("exercises", "solutions")


def pytest_addoption(parser):
    parser.addoption("--impl", default=os.environ.get("MINIMC_IMPL", "exercises"),
                     help="what the exercise tests grade: 'exercises' (default: $MINIMC_IMPL or "
                          "'exercises'), 'solutions', or a folder holding chNN_*.py files")
    parser.addoption("--grade-json", default=None, metavar="PATH",
                     help="append one JSON line per exercise test result (for scripts/grade.py)")


def impl_dir(value):
    """The folder of the graded implementation: exercises/, solutions/ or a given folder."""
    return (ROOT / value) if value in IMPLS else Path(value).expanduser().resolve()


def _is_exercise(item_or_report):
    """True for tests in tests/exercises/ (the graded ones)."""
    path = Path(str(item_or_report.fspath))
    return path.parent.name == "exercises" and path.parent.parent.name == "tests"


def pytest_configure(config):
    global _GRADE_JSON, _IMPL_DIR
    _GRADE_JSON = config.getoption("--grade-json")
    value = config.getoption("--impl")
    _IMPL_DIR = impl_dir(value)
    if value not in IMPLS and not _IMPL_DIR.is_dir():
        raise pytest.UsageError(f"--impl {value!r}: not 'exercises', 'solutions' or a folder")


def pytest_collection_modifyitems(config, items):
    for item in items:               # a backstop; learner calls have their own limit (grading.py)
        if _is_exercise(item) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(EXERCISE_TIMEOUT, method="signal"))
    path = config.getoption("--grade-json")
    if path:                         # so the grader can list tests that never got to run
        with open(path, "a") as f:
            for item in items:
                if _is_exercise(item):
                    f.write(json.dumps({"nodeid": item.nodeid, "when": "collected"}) + "\n")


class LearnerModule:
    """The learner's module, each of its own functions called through grading.call_learner
    (clones of the inputs, a time limit, no None, no modified inputs). ``.raw`` is the module."""

    def __init__(self, module, limit=None):
        self.raw, self._limit = module, limit

    def __getattr__(self, name):
        obj = getattr(self.raw, name)
        if not (inspect.isfunction(obj) and obj.__module__ == self.raw.__name__):
            return obj                                      # e.g. a Triton kernel, an import
        limit = self._limit
        # a given launcher (f_triton) runs the learner's kernel (f_kernel): blame the kernel
        kernel = name[:-len("_triton")] + "_kernel" if name.endswith("_triton") else None
        blame = kernel if kernel and hasattr(self.raw, kernel) else None

        @functools.wraps(obj)
        def called(*args, **kwargs):
            return call_learner(obj, *args, _limit=limit, _name=blame, **kwargs)
        return called


_MODULES = {}


def _load(value, chapter):
    """exercises.<chapter>, solutions.<chapter>, or <folder>/<chapter>.py loaded by path."""
    if value in IMPLS:
        return importlib.import_module(f"{value}.{chapter}")
    key = (str(_IMPL_DIR), chapter)
    if key not in _MODULES:
        path = _IMPL_DIR / f"{chapter}.py"
        if not path.exists():
            raise FileNotFoundError(f"no file {path}")
        name = f"_graded_{abs(hash(str(_IMPL_DIR))):x}.{chapter}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module                          # Triton's @jit needs a real module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        _MODULES[key] = module
    return _MODULES[key]


@pytest.fixture
def impl(request):
    """``impl("ch01_linear_memory")`` -> the learner's module (exercises/, solutions/ or --impl
    folder), its functions wrapped by grading.call_learner; ``impl(ch, limit=30)`` for slow ones."""
    value = request.config.getoption("--impl")

    def load(chapter, limit=None):
        try:
            return LearnerModule(_load(value, chapter), limit)
        except NotImplementedError:
            raise
        except Exception as exc:   # a syntax error in the learner's file: say so, not a traceback
            pytest.fail(f"could not import {_shown(_IMPL_DIR / (chapter + '.py'))}: "
                        f"{type(exc).__name__}: {exc}", pytrace=False)
    return load


def _shown(path):
    """A learner's file as they know it: exercises/ch01_x.py, or the full path of a folder."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def diagnosis(excinfo, timeout=EXERCISE_TIMEOUT):
    """One short line on why an exercise test failed (the grading table prints it)."""
    exc = excinfo.value
    text = str(exc).strip()
    if text.startswith("Timeout"):                                  # pytest-timeout's backstop
        return f"the test did not finish within {timeout:g} s (an endless loop, or a much too " \
               "slow one?)"
    if isinstance(exc, NotImplementedError):
        return f"not implemented yet: {text or '?'}"
    if isinstance(exc, AssertionError) or type(exc).__name__ == "Failed":
        return "\n".join(text.splitlines()[:2]) if text else "assertion failed"
    where = ""                       # the deepest frame in the learner's own file, never a test's
    for frame in reversed(traceback.extract_tb(excinfo.tb)):
        path = Path(frame.filename).resolve()
        if _IMPL_DIR is not None and path.parent == _IMPL_DIR:
            where = f" (in {_shown(path)}, line {frame.lineno})"
            break
    who = getattr(exc, "__minimc_function__", None)
    first = text.splitlines()[0] if text else ""
    return f"{who or 'your code'} raised {type(exc).__name__}: {first}{where}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item, call):
    """An untouched stub's NotImplementedError: a one-line report, no traceback (formatting one
    costs about 0.1 s a test, and a learner starts with every test failing this way)."""
    if not (_is_exercise(item) and call.excinfo is not None
            and isinstance(call.excinfo.value, NotImplementedError)):
        return None
    why = diagnosis(call.excinfo)
    keywords = {x: 1 for x in item.keywords}
    return pytest.TestReport(item.nodeid, item.location, keywords, "failed", why, call.when,
                             sections=item._report_sections, duration=call.duration,
                             start=call.start, stop=call.stop,
                             user_properties=[*item.user_properties, ("diagnosis", why)])


@pytest.hookimpl(hookwrapper=True, specname="pytest_runtest_makereport")
def pytest_runtest_makereport_diagnosis(item, call):
    """Every failed exercise test carries its one-line diagnosis (for scripts/grade.py)."""
    outcome = yield
    report = outcome.get_result()
    if not _is_exercise(item) or call.excinfo is None or report.outcome != "failed":
        return
    timeout = item.get_closest_marker("timeout")
    limit = timeout.args[0] if timeout and timeout.args else EXERCISE_TIMEOUT
    why = diagnosis(call.excinfo, limit)
    if "diagnosis" not in dict(report.user_properties):
        report.user_properties.append(("diagnosis", why))


_GRADE_JSON = None
_IMPL_DIR = None


def pytest_runtest_logreport(report):
    path = _GRADE_JSON
    if path is None or not _is_exercise(report):
        return
    if report.when != "call" and report.outcome == "passed":
        return
    why = dict(report.user_properties).get("diagnosis")
    if report.outcome == "failed" and why is None:                 # e.g. an error in a fixture
        why = (report.longreprtext.strip().splitlines() or ["error"])[-1]
    if report.outcome == "skipped":
        why = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else "skipped"
        why = why[len("Skipped: "):] if why.startswith("Skipped: ") else why
    with open(path, "a") as f:
        f.write(json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                            "diagnosis": why, "seconds": round(report.duration, 3)}) + "\n")
