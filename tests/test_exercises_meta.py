"""CI's proof that the exercises grade something: solutions pass every exercise test, untouched
stubs fail every one of them (with NotImplementedError: no test is vacuous), and exercises/ and
solutions/ expose the same functions, signatures and docstrings.

(These check the repository as committed. Once you start solving exercises the stub checks fail,
as they should: use `make grade` for your score.)
"""
import ast
import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("grade", ROOT / "scripts" / "grade.py")
grade = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grade)

CHAPTERS = sorted(p.stem for p in (ROOT / "exercises").glob("ch[0-9][0-9]_*.py"))
needs_exercises = pytest.mark.skipif(not CHAPTERS, reason="no exercise chapters yet")


def functions(module):
    """Public functions defined in the module itself (not imported ones)."""
    return {name: f for name, f in inspect.getmembers(module, inspect.isfunction)
            if f.__module__ == module.__name__ and not name.startswith("_")}


@pytest.fixture(scope="module")
def runs():
    files = sorted(grade.chapters()[n][1] for n in grade.chapters())
    return {impl: grade.run_pytest(files, impl, timeout=1200, records=RECORDS[impl])
            for impl in ("solutions", "exercises")}


RECORDS = {"solutions": [], "exercises": []}          # raw JSON records of the two runs


def test_every_chapter_has_solutions_and_tests():
    tests = {p.stem[len("test_"):] for p in (ROOT / "tests" / "exercises").glob("test_ch*.py")}
    solutions = {p.stem for p in (ROOT / "solutions").glob("ch[0-9][0-9]_*.py")}
    assert set(CHAPTERS) == solutions, "exercises/ and solutions/ must hold the same chapters"
    assert set(CHAPTERS) == tests, "each exercises/chNN_x.py needs tests/exercises/test_chNN_x.py"


@needs_exercises
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_same_functions_signatures_docstrings(chapter):
    ex = importlib.import_module(f"exercises.{chapter}")
    sol = importlib.import_module(f"solutions.{chapter}")
    fe, fs = functions(ex), functions(sol)
    assert sorted(fe) == sorted(fs), f"{chapter}: exercises {sorted(fe)} vs solutions {sorted(fs)}"
    for name in fe:
        where = f"{chapter}.{name}"
        assert inspect.signature(fe[name]) == inspect.signature(fs[name]), f"{where}: signature"
        assert inspect.getdoc(fe[name]), f"{where} needs a docstring (the exercise statement)"
        assert inspect.getdoc(fe[name]) == inspect.getdoc(fs[name]), f"{chapter}.{name}: docstring"


def _is_stub(node):
    """def f(...): ["docstring"] raise NotImplementedError("f")"""
    body = node.body[1:] if ast.get_docstring(node) is not None else node.body
    return (len(body) == 1 and isinstance(body[0], ast.Raise)
            and ast.unparse(body[0].exc) == f"NotImplementedError({node.name!r})")


@needs_exercises
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_exercises_are_untouched_stubs(chapter):
    """Each public function is a stub, or (a helper given to the learner) identical to the
    solution."""
    trees = {d: ast.parse((ROOT / d / f"{chapter}.py").read_text())
             for d in ("exercises", "solutions")}
    given = {n.name: ast.dump(n) for n in trees["solutions"].body if isinstance(n, ast.FunctionDef)}
    stubs = 0
    for node in trees["exercises"].body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            if _is_stub(node):
                stubs += 1
            else:
                assert given.get(node.name) == ast.dump(node), (
                    f"exercises/{chapter}.py: {node.name} is neither an untouched stub (body: "
                    f"raise NotImplementedError({node.name!r})) nor identical to the solution")
    assert stubs, f"exercises/{chapter}.py has no stub to complete"


@needs_exercises
def test_solutions_pass_every_exercise_test(runs):
    results, output, note = runs["solutions"]
    assert results and note is None, f"the exercise tests did not run ({note}):\n{output[-3000:]}"
    bad = {k: v for k, v in results.items() if v[0] not in ("passed", "skipped")}
    assert not bad, "solutions fail:\n" + "\n".join(f"{k}: {v[1]}" for k, v in bad.items())


@needs_exercises
def test_solutions_run_well_within_the_time_limit(runs):
    """The per-call limit (grading.LIMIT, 10 s; 30 s for the Triton kernels) must leave a wide
    margin over the slowest solution, so a slow machine never fails a right answer."""
    import grading
    seconds = {r["nodeid"]: r["seconds"] for r in RECORDS["solutions"] if r.get("when") == "call"}
    assert seconds, "no timings recorded"
    slowest = max(seconds, key=seconds.get)
    assert seconds[slowest] < grading.LIMIT / 3, f"{slowest} took {seconds[slowest]} s"


def test_every_exercise_test_grades_through_impl():
    """Every exercise test takes the ``impl`` fixture (whose functions run through
    grading.call_learner: clones, time limit, None and in-place checks)."""
    for path in sorted((ROOT / "tests" / "exercises").glob("test_ch*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                assert "impl" in [a.arg for a in node.args.args], f"{path.name}::{node.name}"


@needs_exercises
def test_untouched_stubs_fail_every_exercise_test(runs):
    results, output, note = runs["exercises"]
    assert results and note is None, f"the exercise tests did not run ({note}):\n{output[-3000:]}"
    solution_skips = {k for k, v in runs["solutions"][0].items() if v[0] == "skipped"}
    problems = [f"{k}: {outcome} ({why})" for k, (outcome, why) in results.items()
                if not (outcome == "failed" and (why or "").startswith("not implemented yet: "))
                and not (outcome == "skipped" and k in solution_skips)]
    assert not problems, ("with untouched stubs every exercise test must fail on "
                          "NotImplementedError "
                          "(else it grades nothing):\n" + "\n".join(problems))
    graded = {why.split(": ", 1)[1] for outcome, why in results.values() if outcome == "failed"}
    for chapter in CHAPTERS:
        stubs = [n.name for n in ast.parse((ROOT / "exercises" / f"{chapter}.py").read_text()).body
                 if isinstance(n, ast.FunctionDef) and _is_stub(n)]
        untested = sorted(set(stubs) - graded)
        assert not untested, f"exercises/{chapter}.py: no test reaches {untested}"
