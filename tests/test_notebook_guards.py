"""The notebook runs fail loudly: a cell past the per-cell limit, a cell error, or a cell whose
kernel reply never came (while the kernel sat idle) names its notebook and cell, in `make book`
(scripts/build_book.py) and in the notebook tests (book/conftest.py over nbval)."""
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
build_book = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_book)


def notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def test_build_fails_on_a_slow_cell_naming_notebook_and_cell(tmp_path, monkeypatch):
    monkeypatch.setattr(build_book, "CELL_LIMIT", 3)
    page = notebook(tmp_path / "slow.ipynb", "x = 1", "import time\ntime.sleep(30)")
    with pytest.raises(SystemExit) as e:
        build_book.execute(page, {})
    msg = str(e.value)
    assert "slow.ipynb, cell 1" in msg and "per-cell limit of 3 s" in msg, msg


def test_build_fails_on_a_cell_error_naming_notebook_and_cell(tmp_path):
    page = notebook(tmp_path / "bad.ipynb", "x = 1", "y = 2", "1 / 0")
    with pytest.raises(SystemExit) as e:
        build_book.execute(page, {})
    assert "bad.ipynb, cell 2 ('1 / 0') raised an error" in str(e.value)


def test_build_treats_missing_outputs_as_an_error():
    client = build_book._Client(nbformat.v4.new_notebook(), timeout=build_book.CELL_LIMIT,
                                iopub_timeout=build_book.IOPUB_WAIT, raise_on_iopub_timeout=True)
    assert client.raise_on_iopub_timeout and 0 < build_book.IOPUB_WAIT < build_book.CELL_LIMIT


def test_nbval_fails_a_cell_whose_reply_never_came(tmp_path):
    """A cell that ignores the interrupt and outlives the cell timeout: nbval alone would read
    its idle status and pass it; book/conftest.py fails it, naming the notebook and cell."""
    shutil.copy(ROOT / "book" / "conftest.py", tmp_path / "conftest.py")
    notebook(tmp_path / "stall.ipynb", "x = 1",
             "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(5)",
             "y = 2")
    run = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
                          "--nbval-cell-timeout=2", "-p", "no:cacheprovider", "-q", "-rf",
                          "stall.ipynb"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "stall.ipynb, Cell 1: no execute reply within 2 s" in out, out
    assert "seconds per notebook" in out, out


def test_a_missed_wake_up_costs_one_slice_not_the_cell_limit():
    """A channel whose poll misses the wake-up of a message already there, and finds it only
    when its timeout ends (what scripts/build_book.py measured of zmq.asyncio): polled in slices,
    the message comes after one slice instead of after the whole cell limit."""
    import asyncio
    import queue
    import time

    arrived = time.monotonic() + 0.2                # the reply lands 0.2 s after the request

    async def missing_get_msg(timeout=None):
        await asyncio.sleep(timeout)                # sleeps through the arrival ...
        if time.monotonic() >= arrived:
            return {"msg": "reply"}                 # ... and sees it only at its timeout
        raise queue.Empty

    async def wait(get_msg):
        start = time.monotonic()
        msg = await get_msg(timeout=8.0)
        return msg, time.monotonic() - start

    _, plain = asyncio.run(wait(missing_get_msg))
    msg, sliced = asyncio.run(wait(build_book._sliced(missing_get_msg)))
    assert msg == {"msg": "reply"} and plain > 7.9 and sliced < 1.5, (plain, sliced)
