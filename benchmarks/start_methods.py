"""What the start method costs: forkserver (default) against spawn.

    python benchmarks/start_methods.py

For each method, median of 5 runs: ``startup()`` with 2 and 8 workers (until
every worker is READY), and capacity restore (a running task is cancelled,
until two new trivial tasks on the freed slot have completed).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_jobs
from genro_tasks import TaskManager, TaskStatus


async def startup_ms(method: str, workers: int) -> float:
    tm = TaskManager(workers, start_method=method)
    t0 = time.perf_counter()
    await tm.startup()
    elapsed = (time.perf_counter() - t0) * 1e3
    await tm.shutdown(wait=False)
    return elapsed


async def restore_ms(method: str) -> float:
    async with TaskManager(2, start_method=method) as tm:
        busy = [tm.submit(bench_jobs.sleep, 60) for _ in range(2)]
        for tid in busy:
            async for info in tm.watch(tid):
                if info.status is TaskStatus.RUNNING:
                    break
        t0 = time.perf_counter()
        await tm.cancel(busy[0])
        await tm.run(bench_jobs.double, 1)
        await tm.run(bench_jobs.double, 2)
        elapsed = (time.perf_counter() - t0) * 1e3
        await tm.cancel(busy[1])
    return elapsed


async def main() -> None:
    rows: dict[str, dict[str, list[float]]] = {}
    for _ in range(5):
        for method in ("forkserver", "spawn"):
            row = rows.setdefault(method, {"startup 2": [], "startup 8": [], "restore": []})
            row["startup 2"].append(await startup_ms(method, 2))
            row["startup 8"].append(await startup_ms(method, 8))
            row["restore"].append(await restore_ms(method))
    print("| start method | startup, 2 workers (ms) | startup, 8 workers (ms) | capacity restore (ms) |")
    print("|---|---|---|---|")
    for method, row in rows.items():
        cells = " | ".join(f"{statistics.median(v):.1f}" for v in row.values())
        print(f"| {method} | {cells} |")


if __name__ == "__main__":
    trio.run(main)
