"""Parent-side CPU time per task: the engine's own overhead, steadier than wall time.

    python benchmarks/parent_cpu.py            # this checkout
    PYTHONPATH=/other/checkout/src python benchmarks/parent_cpu.py   # another version

Wall-clock figures swing with whatever else runs on a shared machine; the CPU
time the parent process spends per trivial task (submitting, dispatching,
reading the worker's messages, recording) moves far less, so two versions of
the engine can be compared run after run. Prints the best of five rounds for
sequential round trips (``run`` one after the other) and for a batch
(``submit`` many, then ``result`` each).
"""

from __future__ import annotations

import sys
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


async def main() -> None:
    async with TaskManager(2, max_finished=BATCH) as tm:  # every result of a batch is still there when awaited
        for _ in range(300):
            await tm.run(double, 1)
        sequential = batched = float("inf")
        for _ in range(ROUNDS):
            start = time.process_time()
            for _ in range(SEQUENTIAL):
                await tm.run(double, 1)
            sequential = min(sequential, (time.process_time() - start) / SEQUENTIAL * 1e6)
            start = time.process_time()
            ids = [tm.submit(double, i) for i in range(BATCH)]
            for tid in ids:
                await tm.result(tid)
            batched = min(batched, (time.process_time() - start) / BATCH * 1e6)
    print(f"{WHERE}: parent CPU per task: sequential {sequential:.1f} us, batched {batched:.1f} us")


if __name__ == "__main__":
    trio.run(main)
