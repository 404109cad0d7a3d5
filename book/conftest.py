"""Guards for the notebook tests (`make test-notebooks`: pytest --nbval-lax over book/).

nbval runs each chapter's cells in one kernel. Two ways it could pass a cell it never saw finish:
when the execute reply does not come within --nbval-cell-timeout, nbval interrupts the kernel and
then reads IOPub until it sees the cell's idle status; if the kernel was idle all along (a lost
reply), the idle status is already there and the cell *passes*. The hooks below turn that into a
failure that names the notebook and the cell, and print each chapter's time at the end, so a slow
or stalled chapter is visible in every run.
"""
import time
from collections import defaultdict

import pytest

_seconds = defaultdict(float)          # notebook -> seconds spent in its cells


def _is_nbval_cell(item):
    return type(item).__name__ == "IPyNbCell"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    if not _is_nbval_cell(item):
        return (yield)
    already = item.parent.timed_out
    start = time.perf_counter()
    try:
        result = yield                   # a failing cell raises here, as usual
    finally:
        _seconds[item.parent.name] += time.perf_counter() - start
    if item.parent.timed_out and not already:
        limit = item.config.getoption("nbval_cell_timeout")
        pytest.fail(f"{item.parent.name}, {item.name}: no execute reply within "
                    f"{float(limit):g} s, yet the kernel was idle (a lost kernel message, or a "
                    "cell slower than the per-cell limit). The cell's outputs were not all "
                    "received: failing, not passing.", pytrace=False)
    return result


def pytest_terminal_summary(terminalreporter):
    if _seconds:
        terminalreporter.write_sep("-", "seconds per notebook (cells only)")
        for name, s in sorted(_seconds.items()):
            terminalreporter.write_line(f"{s:7.1f}  {name}")
        terminalreporter.write_line(f"{sum(_seconds.values()):7.1f}  total")
