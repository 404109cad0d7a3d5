"""Repository hygiene CI checks: clean notebooks, one list of packages, one test command."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p for p in (ROOT / "book").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_committed_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; clear them "
                       f"(jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)})")
    assert "widgets" not in nb.get("metadata", {}), f"{path.name}: saved widget state in metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_nbformat(path):
    nbformat = pytest.importorskip("nbformat")
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert all("id" in c for c in raw["cells"]), (
        f"{path.name}: cells without ids (save it in JupyterLab)")
    nbformat.validate(nbformat.from_dict(raw))


def _pins(lines):
    return {m[1].lower(): m[2] for m in (re.match(r"\s*([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
                                         for line in lines) if m}


def test_environment_yml_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    text = (ROOT / "environment.yml").read_text()
    pip = text.split("- pip:", 1)[1]
    listed = _pins(line.split("- ", 1)[1] for line in pip.splitlines()
                   if line.strip().startswith("- "))
    assert listed == wanted, (
        "environment.yml and pyproject.toml (dependencies + dev) must pin the same packages; "
        f"only in environment.yml: {listed.items() - wanted.items()}, "
        f"only in pyproject.toml: {wanted.items() - listed.items()}")
    unpinned = [d for d in project["dependencies"] + project["optional-dependencies"]["dev"]
                if "==" not in d]
    assert not unpinned, f"unpinned packages in pyproject.toml: {unpinned}"


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    calls = re.findall(r"^[^#\n]*?\b(make \w[\w-]*)", ci, re.M)
    assert calls, ".ci/run should call a make target"
    readme = (ROOT / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S))
    commands = {line.split("#")[0].strip() for line in blocks.splitlines()}
    for call in calls:
        assert call in commands, f"README's code blocks should show `{call}` (what .ci/run calls)"


def test_book_infrastructure():
    """The book builds from _config.yml with local assets; no chapter file is misnamed."""
    config = (ROOT / "book" / "_config.yml").read_text()
    # scripts/build_book.py executes every chapter itself (per-cell limit, lost messages fail)
    assert 'execute_notebooks: "off"' in config and "mathjax_path: mathjax/" in config
    assert not re.search(r"https?://", config), "book/_config.yml must not point at the internet"
    assert not (ROOT / "book" / "_static").exists(), (
        "no book/_static/ (JB1 injects every .js in it)")
    for p in (ROOT / "book").glob("*.ipynb"):
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", p.name), (
            f"book/{p.name}: name it NN_slug.ipynb")
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    assert "node_modules/mathjax" in lock, "package-lock.json lacks mathjax"
    # Widgets show their own static face (minimc.viz.static_interact), never the ipywidgets view
    assert "nb_mime_priority_overrides: [[html, application/vnd.jupyter.widget-view+json, null]]" \
        in config and "nb_ipywidgets_js: {}" in config


# Lint (ruff: pyflakes + pycodestyle, lines <= 100) over every Python file of these folders.
LINTED_DIRS = ["minimc", "scripts", "tests", "exercises", "solutions"]
LINTED = ["book/conftest.py"] + sorted(
    p.relative_to(ROOT).as_posix() for d in LINTED_DIRS for p in (ROOT / d).rglob("*.py"))


def test_lint():
    import shutil
    import subprocess
    import sys
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    run = subprocess.run([ruff, "check", *LINTED], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def _minimc_imports(path):
    """Modules of minimc that a file imports anywhere (inside functions too), and whether it
    imports triton."""
    import ast
    names, triton = set(), False
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                names.add(node.module.split(".")[0])
            elif node.level == 1:
                names.update(a.name for a in node.names)
            elif (node.module or "").startswith("minimc."):
                names.add(node.module.split(".")[1])
            triton |= (node.module or "").split(".")[0] == "triton"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("minimc."):
                    names.add(a.name.split(".")[1])
                triton |= a.name.split(".")[0] == "triton"
    return names, triton


def test_library_has_no_import_cycle_and_one_triton_module():
    files = {p.stem: p for p in (ROOT / "minimc").glob("*.py") if p.stem != "__init__"}
    graph, with_triton = {}, []
    for name, path in files.items():
        graph[name], triton = _minimc_imports(path)
        if triton:
            with_triton.append(name)
    assert with_triton == ["kernel"], f"only minimc/kernel.py may import triton: {with_triton}"
    assert _minimc_imports(files["checks"])[0] == set(), "checks.py must be a leaf"
    done, path = set(), []

    def visit(node):                                       # depth-first search for a cycle
        assert node not in path, f"import cycle: {' -> '.join(path + [node])}"
        if node in done:
            return
        path.append(node)
        for nxt in graph.get(node, ()):
            visit(nxt)
        path.pop()
        done.add(node)

    for name in graph:
        visit(name)
