"""Parent-side CPU time per task: the engine's own overhead, steadier than wall time.

    python benchmarks/parent_cpu.py            # this checkout, in memory
    python benchmarks/parent_cpu.py --store    # the same with an SQLite store (a temporary file)
    PYTHONPATH=/other/checkout/src python benchmarks/parent_cpu.py   # another version

Wall-clock figures swing with whatever else runs on a shared machine; the CPU
time the parent process spends per trivial task (submitting, dispatching,
reading the worker's messages, recording) moves far less, so two versions of
the engine can be compared run after run. Prints the best of five rounds for
sequential round trips (``run`` one after the other) and for a batch
(``submit`` many, then ``result`` each): the whole process's CPU, and the
trio thread's alone (the rest is the store's writer thread, with ``--store``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import genro_tasks
from bench_jobs import double
from genro_tasks import TaskManager

#: Which checkout's genro_tasks this measures.
WHERE = Path(genro_tasks.__file__).resolve().parent.parent
ROUNDS = 5
SEQUENTIAL = 2000
BATCH = 20_000


def _per_task(start: tuple[float, float], count: int) -> tuple[float, float]:
    """(process, trio thread) CPU per task since ``start``, in µs."""
    return (
        (time.process_time() - start[0]) / count * 1e6,
        (time.thread_time() - start[1]) / count * 1e6,
    )


def _now() -> tuple[float, float]:
    return time.process_time(), time.thread_time()


async def main(store: Path | None) -> None:
    # max_finished: every result of a batch is still there when awaited.
    async with TaskManager(2, max_finished=BATCH, store=store) as tm:
        for _ in range(300):
            await tm.run(double, 1)
        sequential = batched = (float("inf"), float("inf"))
        for _ in range(ROUNDS):
            start = _now()
            for _ in range(SEQUENTIAL):
                await tm.run(double, 1)
            sequential = min(sequential, _per_task(start, SEQUENTIAL))
            start = _now()
            ids = [tm.submit(double, i) for i in range(BATCH)]
            for tid in ids:
                await tm.result(tid)
            batched = min(batched, _per_task(start, BATCH))
            tm.clear_completed()
    where = "with an SQLite store" if store is not None else "in memory"
    print(
        f"{WHERE} ({where}): parent CPU per task: sequential {sequential[0]:.1f} us "
        f"(trio thread {sequential[1]:.1f}), batched {batched[0]:.1f} us (trio thread {batched[1]:.1f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", action="store_true", help="use an SQLite store in a temporary directory")
    args = parser.parse_args()
    if args.store:
        with tempfile.TemporaryDirectory() as tmp:
            trio.run(main, Path(tmp) / "tasks.db")
    else:
        trio.run(main, None)
