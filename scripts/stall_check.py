"""Count cells that stall for exactly the cell limit: the measurement behind build_book's polling.

    python scripts/stall_check.py --runs 40                 # both ways, interleaved (~25 min)
    python scripts/stall_check.py --runs 10 --mode sliced

Runs chapter 1 up to and including its first widget (the cell where `make book` was seen to
stall) again and again, each time in a fresh kernel, with a short cell limit. "one poll" is
nbclient's own wait for a cell's reply: one zmq.asyncio poll of the whole limit. "sliced" is
scripts/build_book.py's: polls of 1 s. A cell that takes the whole limit and still passes had
its reply waiting while the poll slept: a missed wake-up.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import build_book  # noqa: E402


class Timed(NotebookClient):
    """nbclient that records each cell's time; with sliced=True, build_book's polling."""

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        if self.sliced:
            for channel in (kc.shell_channel, kc.iopub_channel):
                channel.get_msg = build_book._sliced(channel.get_msg)
        return kc

    async def async_execute_cell(self, cell, index, *args, **kwargs):
        start = time.perf_counter()
        out = await super().async_execute_cell(cell, index, *args, **kwargs)
        self.times.append(time.perf_counter() - start)
        return out


def prefix_of_chapter_1():
    """Chapter 1's code cells up to its first widget (static_interact)."""
    nb = nbformat.read(ROOT / "book" / "01_linear_memory.ipynb", as_version=4)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            cells.append(cell)
            if "static_interact(" in cell.source:
                break
    nb.cells = cells
    return nb


def run(mode, limit):
    client = Timed(prefix_of_chapter_1(), timeout=limit, iopub_timeout=10,
                   raise_on_iopub_timeout=True, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "book")}})
    client.sliced, client.times = mode == "sliced", []
    client.execute()
    return client.times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each mode")
    parser.add_argument("--limit", type=float, default=20.0, help="cell limit, seconds")
    parser.add_argument("--mode", choices=["one poll", "sliced", "both"], default="both")
    args = parser.parse_args()
    modes = ["one poll", "sliced"] if args.mode == "both" else [args.mode]
    stalls = {m: 0 for m in modes}
    slowest = {m: [] for m in modes}
    for i in range(args.runs):
        for mode in modes:                                   # interleaved: same load for both
            times = run(mode, args.limit)
            stalled = [round(t, 1) for t in times if t >= 0.9 * args.limit]
            stalls[mode] += bool(stalled)
            slowest[mode].append(max(t for t in times if t < 0.9 * args.limit))
            print(f"run {i + 1:3d} {mode:>8}: slowest cell {max(times):6.1f} s"
                  + (f"  STALLED {stalled}" if stalled else ""), flush=True)
    for mode in modes:
        print(f"{mode:>8}: {stalls[mode]} of {args.runs} runs stalled for the whole limit "
              f"({args.limit:g} s); median slowest other cell "
              f"{statistics.median(slowest[mode]):.1f} s")


if __name__ == "__main__":
    main()
