"""genro_tasks: its Pool adapter and the metrics only genro_tasks has (progress, scale)."""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

import bench_jobs
from _common import Job, Numbers, Params, Pool, call_many, now
from genro_tasks import TaskManager, TaskStatus


class GenroJob:
    def __init__(self, tm: TaskManager, task_id: str) -> None:
        self.tm = tm
        self.task_id = task_id

    async def reported_running(self) -> bool | None:
        return (await self.tm.info(self.task_id)).status is TaskStatus.RUNNING

    async def result(self) -> Any:
        return await self.tm.result(self.task_id)

    async def cancel(self) -> None:
        if not await self.tm.cancel(self.task_id):
            raise RuntimeError("tm.cancel() returned False")


class GenroPool:
    can_cancel = True

    def __init__(self, tm: TaskManager) -> None:
        self.tm = tm

    def start(self, fn: Callable[..., Any], *args: Any) -> Job:
        return GenroJob(self.tm, self.tm.submit(fn, *args))

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.tm.run(fn, *args)

    async def run_batch(self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Submit every job, then ``tm.gather`` their results (the README's way to await many tasks)."""
        tm = self.tm
        return await tm.gather([tm.submit(fn, *a) for a in args])

    async def wait_running(self, job: Job, marker: Path) -> None:
        assert isinstance(job, GenroJob)
        await wait_status(self.tm, job.task_id, TaskStatus.RUNNING)


async def wait_status(tm: TaskManager, task_id: str, status: TaskStatus) -> None:
    """Follow the task with tm.watch() until it reaches ``status``."""
    async for info in tm.watch(task_id):
        if info.status is status:
            return
        if info.status.is_terminal:
            raise RuntimeError(f"task ended {info.status.value} before reaching {status.value}: {info.error}")
    raise RuntimeError("watch() ended early")


@asynccontextmanager
async def open_genro(workers: int, **options: Any) -> AsyncIterator[Pool]:
    """A started TaskManager (startup() returns once every worker is ready); killed at exit."""
    tm = TaskManager(max_workers=workers, **options)
    await tm.startup()
    try:
        yield GenroPool(tm)
    finally:
        with trio.CancelScope(shield=True):
            await tm.shutdown(wait=False)


def _span(started: datetime | None, completed: datetime | None) -> float:
    if started is None or completed is None:
        raise RuntimeError("task has no started_at/completed_at")
    return (completed - started).total_seconds()


async def progress_flood(p: Params, store: Path | None = None) -> Numbers:
    """report_progress() called p.size times in a tight loop vs the same loop without it (end to end)."""
    out: Numbers = {}
    async with TaskManager(max_workers=p.workers, store=store) as tm:
        for name, fn in (("without", bench_jobs.plain_loop), ("with", bench_jobs.progress_flood)):
            t0 = now()
            await tm.run(fn, p.size, task_id=name)
            out[f"wall_{name}_s"] = now() - t0
            info = await tm.info(name)
            out[f"{name}_s"] = _span(info.started_at, info.completed_at)
    out["overhead_s"] = out["with_s"] - out["without_s"]
    out["wall_overhead_s"] = out["wall_with_s"] - out["wall_without_s"]
    return out


async def progress_latency(p: Params) -> Numbers:
    """How long until a value reported in the worker is visible through tm.watch()."""
    async with TaskManager(max_workers=p.workers) as tm:
        tid = tm.submit(bench_jobs.report_time_then_sleep, 1.0)
        latency = -1.0
        async for info in tm.watch(tid):
            if info.progress_message:
                latency = time.time() - float(info.progress_message)
                break
        await tm.cancel(tid)
    if latency < 0:
        raise RuntimeError("the progress value never arrived")
    return {"latency_ms": latency * 1e3}


async def scale(p: Params) -> Numbers:
    """p.size trivial tasks queued at once: parent memory per queued task, then the drain rate.

    After an untimed warm-up batch (min(n, 1000) tasks), the first batch is submitted
    under tracemalloc (stopped before the drain); p.repeat batches in all are drained
    and timed, and the median rate is reported.
    """
    n = p.size
    rates: list[float] = []
    per_task = 0.0
    # Keep every finished record of a batch: results are collected after the drain.
    async with open_genro(p.workers, max_finished=max(n, 1000)) as pool:
        assert isinstance(pool, GenroPool)
        tm = pool.tm
        await call_many(pool, bench_jobs.double, [(i,) for i in range(min(n, 1000))])
        for batch in range(p.repeat):
            tm.clear_completed()
            gc.collect()
            if batch == 0:
                tracemalloc.start()
                before = tracemalloc.get_traced_memory()[0]
            ids = [tm.submit(bench_jobs.double, i) for i in range(n)]  # no checkpoint: nothing runs yet
            if batch == 0:
                per_task = (tracemalloc.get_traced_memory()[0] - before) / n
                tracemalloc.stop()
            t0 = now()
            total = 0
            for tid in ids:
                total += await tm.result(tid)
            rates.append(n / (now() - t0))
            if total != n * (n - 1):
                raise RuntimeError("wrong results")
    return {"bytes_per_task": per_task, "drain_tps": statistics.median(rates), "batches": float(len(rates))}
