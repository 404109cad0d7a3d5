"""Shared pytest set-up: the Triton interpreter on CPU, the `impl` fixture, exercise diagnoses.

    pytest tests/exercises                    # grades exercises/ (default, or $MINIMC_IMPL)
    pytest tests/exercises --impl solutions   # grades solutions/
"""
import importlib
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

EXERCISE_TIMEOUT = float(os.environ.get("MINIMC_TEST_TIMEOUT", 60))   # seconds per exercise test
IMPLS = ("exercises", "solutions")


def pytest_addoption(parser):
    parser.addoption("--impl", default=os.environ.get("MINIMC_IMPL", "exercises"), choices=IMPLS,
                     help="which implementation the exercise tests grade (default: $MINIMC_IMPL "
                          "or 'exercises')")
    parser.addoption("--grade-json", default=None, metavar="PATH",
                     help="append one JSON line per exercise test result (used by scripts/grade.py)")


def _is_exercise(item_or_report):
    """True for tests in tests/exercises/ (the graded ones)."""
    return Path(str(item_or_report.fspath)).parent.name == "exercises"


def pytest_collection_modifyitems(config, items):
    for item in items:               # a learner function that never returns fails its own test only
        if _is_exercise(item) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(EXERCISE_TIMEOUT, method="signal"))
    path = config.getoption("--grade-json")
    if path:                         # so the grader can list tests that never got to run
        with open(path, "a") as f:
            for item in items:
                if _is_exercise(item):
                    f.write(json.dumps({"nodeid": item.nodeid, "when": "collected"}) + "\n")


@pytest.fixture
def impl(request):
    """``impl("ch01_linear_memory")`` -> the module exercises.ch01_linear_memory (or solutions.*)."""
    package = request.config.getoption("--impl")

    def load(chapter):
        name = f"{package}.{chapter}"
        try:
            return importlib.import_module(name)
        except NotImplementedError:
            raise
        except Exception as exc:   # a syntax error in the learner's file: say so, not a traceback
            pytest.fail(f"could not import {package}/{chapter}.py: {type(exc).__name__}: {exc}",
                        pytrace=False)
    return load


def diagnosis(excinfo, timeout=EXERCISE_TIMEOUT):
    """One short line on why an exercise test failed (the grading table prints it)."""
    exc = excinfo.value
    text = str(exc).strip()
    if text.startswith("Timeout"):                                  # pytest-timeout's message
        return f"did not finish within {timeout:g} s (an endless loop, or a much too slow one?)"
    if isinstance(exc, NotImplementedError):
        return f"not implemented yet: {text or '?'}"
    if isinstance(exc, AssertionError) or type(exc).__name__ == "Failed":
        return "\n".join(text.splitlines()[:2]) if text else "assertion failed"
    where = ""                       # the deepest frame in the learner's (or solution) file
    for frame in reversed(traceback.extract_tb(excinfo.tb)):
        path = Path(frame.filename)
        if path.parent.name in IMPLS:
            where = f" (in {path.parent.name}/{path.name}, line {frame.lineno})"
            break
    return f"your code raised {type(exc).__name__}: {text.splitlines()[0] if text else ''}{where}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not _is_exercise(item) or call.excinfo is None or report.outcome != "failed":
        return
    timeout = item.get_closest_marker("timeout")
    why = diagnosis(call.excinfo, timeout.args[0] if timeout and timeout.args else EXERCISE_TIMEOUT)
    report.user_properties.append(("diagnosis", why))
    if isinstance(call.excinfo.value, NotImplementedError):
        report.longrepr = why                                       # no traceback for a stub


_GRADE_JSON = None


def pytest_configure(config):
    global _GRADE_JSON
    _GRADE_JSON = config.getoption("--grade-json")


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
    with open(path, "a") as f:
        f.write(json.dumps({"nodeid": report.nodeid, "when": report.when,
                            "outcome": report.outcome, "diagnosis": why}) + "\n")
