"""Grade the exercises: a score per chapter, and one or two lines on each failing test.

    make grade                                    # every chapter, your exercises/
    python scripts/grade.py --chapter 1           # one chapter (or --chapter 1,5)
    python scripts/grade.py --impl solutions      # grade the reference solutions instead
    python scripts/grade.py --impl ~/my_attempts  # grade the chNN_*.py files of another folder
    %run ../scripts/grade.py --chapter 1          # a notebook's "check your work" cell (cwd book/)

The tests run in a fresh pytest process (so your latest edits are the ones graded), each with a
time limit (a function that does not return within 10 s is named and its remaining tests are
counted as failed without running), and grading never stops at the first failure. Exit status 0
unless --strict is given and a test fails, or the tests could not run at all.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests" / "exercises"
OVERALL_TIMEOUT = float(os.environ.get("MINIMC_GRADE_TIMEOUT", 1800))   # seconds for one run
NOT_RUN = "not run: "           # how tests/grading.py skips the later tests of a timed-out function


def counts(outcome, why):
    """Whether a result counts in the score: every test but a skip for another reason."""
    return outcome != "skipped" or (why or "").startswith(NOT_RUN)


def chapters():
    """{number: (slug, test file)} for every chapter that has exercise tests."""
    found = {}
    for path in sorted(TESTS.glob("test_ch[0-9][0-9]_*.py")):
        number = int(path.name[7:9])
        found[number] = (path.stem[len("test_"):], path)
    return found


def title(number, slug):
    """The first '# ' heading of book/NN_*.ipynb without "Chapter N:", else the slug."""
    for nb in sorted((ROOT / "book").glob(f"{number:02d}_*.ipynb")):
        try:
            cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        except (OSError, ValueError, KeyError):
            continue
        for cell in cells:
            source = "".join(cell.get("source", ""))
            for line in source.splitlines() if cell.get("cell_type") == "markdown" else []:
                if line.startswith("# "):
                    return re.sub(r"^(chapter\s+)?\d+\s*[:.\-–—]\s*", "", line[2:].strip(),
                                  flags=re.I)
    return slug.split("_", 1)[1].replace("_", " ").capitalize()


def run_pytest(files, impl, timeout=OVERALL_TIMEOUT, records=None):
    """Run the exercise tests; returns ({nodeid: (outcome, diagnosis)}, pytest output, note).
    ``records``: a list that receives every raw JSON record (with each phase's seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "results.jsonl"
        if impl not in ("exercises", "solutions"):
            impl = str(Path(impl).expanduser().resolve())
        cmd = [sys.executable, "-m", "pytest", *map(str, files), f"--impl={impl}",
               f"--grade-json={log}", "-q", "--tb=line", "-p", "no:cacheprovider",
               "--continue-on-collection-errors"]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        note = None
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout)
            output = proc.stdout + proc.stderr
            if proc.returncode not in (0, 1):
                note = f"pytest exited with status {proc.returncode}"
        except subprocess.TimeoutExpired as exc:
            output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
            note = f"grading stopped after {timeout:g} s (a test that cannot be interrupted?)"
        lines = log.read_text().splitlines() if log.exists() else []
    records = records if records is not None else []
    records.extend(json.loads(line) for line in lines)
    results = {}
    for r in records:                      # collected -> "not run" until a phase reports
        if r["when"] == "collected":
            results.setdefault(r["nodeid"], ("not run", note or "did not run"))
            continue
        previous = results.get(r["nodeid"], ("not run", None))[0]
        if previous == "failed" or (previous == "skipped" and r["outcome"] == "passed"):
            continue                       # the first failure (setup, call or teardown) wins
        results[r["nodeid"]] = (r["outcome"], r["diagnosis"])
    return results, output, note


def summarise(failing):
    """[(label, reason)] for failing [(test name, reason)]: one entry per reason shared by several
    tests ("5 tests: not implemented yet: f"), else one per test function, with the reason of its
    first failing case ("test_x (4 tests, the first): ...")."""
    by_reason = {}
    for name, why in failing:
        by_reason.setdefault(why, []).append(name)
    entries = {}                                   # label key -> [count, reason, cases differ]
    for why, names in by_reason.items():
        bases = list(dict.fromkeys(name.split("[")[0] for name in names))
        if len(bases) > 1:
            entries[("many", why)] = [len(names), why, False, f"{len(names)} tests"]
        elif bases[0] in entries:
            entries[bases[0]][0] += len(names)
            entries[bases[0]][2] = True
        else:
            entries[bases[0]] = [len(names), why, False, bases[0]]
    out = []
    for n, why, differ, label in entries.values():
        if not label.endswith(" tests") and n > 1:
            label += f" ({n} tests{', the first' if differ else ''})"
        out.append((label, why))
    return out


def collection_errors(output):
    """{test file: message} for test files pytest could not import."""
    errors = {}
    for m in re.finditer(r"^ERROR (tests/exercises/\S+\.py)(?: - (.*))?$", output, re.M):
        errors[Path(m[1]).name] = m[2] or "could not collect the tests"
    section = r"ERROR collecting (tests/exercises/\S+\.py)[ _]*\n(.*?)(?=\n_{3,}|\n={3,}|\Z)"
    for m in re.finditer(section, output, re.S):
        last = re.findall(r"^E +(.+)$", m[2], re.M)
        if last:
            errors[Path(m[1]).name] = last[-1].strip()
    return errors


def grade(selected=None, impl=None, strict=False, out=print):
    """Print the score table for the chosen chapters; returns an exit status."""
    impl = impl or os.environ.get("MINIMC_IMPL", "exercises")
    known = chapters()
    selected = sorted(known) if not selected else selected
    missing = [n for n in selected if n not in known]
    for n in missing:
        out(f"Chapter {n} has no exercise tests (tests/exercises/test_ch{n:02d}_*.py).")
    selected = [n for n in selected if n in known]
    if not selected:
        out("No exercises to grade yet." if not missing else "")
        return 0
    out(f"Grading {impl}/ for chapter{'s' if len(selected) > 1 else ''} "
        f"{', '.join(map(str, selected))} ...")
    results, output, note = run_pytest([known[n][1] for n in selected], impl)
    broken = collection_errors(output)
    width = max(len(title(n, known[n][0])) for n in selected)
    total = passed = 0
    first_bad = None
    for n in selected:
        slug, path = known[n]
        mine = {k: v for k, v in results.items() if k.split("::")[0].endswith(path.name)}
        ok = sum(o == "passed" for o, _ in mine.values())
        counted = sum(counts(o, why) for o, why in mine.values())
        total, passed = total + counted, passed + ok
        mark = "✓" if counted and ok == counted and path.name not in broken else "✗"
        if mark == "✗" and first_bad is None:
            first_bad = path
        out(f"Chapter {n:<3d} {title(n, slug):<{width}}  {ok}/{counted}  {mark}")
        if path.name in broken:
            out(f"      ✗ the tests could not be loaded: {broken[path.name]}")
        failing = [(k.split("::", 1)[1], why or o) for k, (o, why) in mine.items()
                   if o in ("failed", "not run") or (o == "skipped" and counts(o, why))]
        for label, why in summarise(failing):
            lines = why.splitlines() or ["failed"]
            out(f"  ✗ {label}: {lines[0]}")
            for line in lines[1:2]:
                out(f"    {line.strip()}")
    if note:
        out(f"Note: {note}.")
    if not results and not broken:
        out("The tests did not run; pytest said:\n" + output[-3000:])
        return 2
    out(f"Total: {passed}/{total} tests pass.")
    if first_bad:
        out(f"Full tracebacks: python -m pytest {first_bad.relative_to(ROOT)}")
    return 1 if strict and (passed < total or broken or note) else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapter", action="append", default=[],
                        help="chapter number(s) to grade, e.g. 1 or 1,5 (default: all)")
    parser.add_argument("--impl", default=None,
                        help="what to grade: exercises, solutions or a folder of chNN_*.py files "
                             "(default: $MINIMC_IMPL or exercises)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 unless all pass")
    args = parser.parse_args(argv)
    selected = [int(c) for arg in args.chapter for c in arg.split(",") if c.strip()]
    return grade(selected, args.impl, args.strict)


if __name__ == "__main__":
    status = main()
    if status:                         # exit quietly on success: `%run` in a notebook stays clean
        sys.exit(status)
