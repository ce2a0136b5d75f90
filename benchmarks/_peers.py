"""Pool adapters for the peer libraries, each used the way its documentation suggests.

* trio_parallel: ``WorkerContext.run_sync`` in trio tasks, ``kill_on_cancel=True``.
* anyio: ``anyio.to_process.run_sync`` (trio backend) in anyio tasks, ``cancellable=True``.
* ppe: ``concurrent.futures.ProcessPoolExecutor`` futures awaited through a trio.Event.
* pebble: ``pebble.ProcessPool`` futures awaited the same way; ``future.cancel()`` kills.

Every pool gets a capacity of ``workers`` (a CapacityLimiter for the task-based ones).
"""

from __future__ import annotations

import gc
import math
import statistics
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_process
import pebble
import trio
import trio_parallel

import bench_jobs
from _common import FutureJob, Job, Numbers, Params, Pool, PoolOpener, call_many, now, wait_for_file

_CANCELLED: Any = object()


class TaskJob:
    """A job run by its own task in the pool's task group (trio_parallel, anyio)."""

    def __init__(self, cancel: Callable[[], None], done: Callable[[], Awaitable[None]]) -> None:
        self._cancel = cancel
        self._done = done
        self.value: Any = _CANCELLED
        self.error: BaseException | None = None

    async def reported_running(self) -> bool | None:
        return None  # the library exposes no job state

    async def result(self) -> Any:
        await self._done()
        if self.error is not None:
            raise self.error
        if self.value is _CANCELLED:
            raise RuntimeError("job was cancelled")
        return self.value

    async def cancel(self) -> None:
        self._cancel()
        await self._done()


class _ScopedPool:
    """A peer whose calls are cancelled by cancelling the (trio) scope around them.

    Both trio_parallel and anyio (on its trio backend) run here, so trio's
    scope and event serve both; subclasses say how to call and how to spawn.
    """

    can_cancel = True

    def __init__(self, spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], object]) -> None:
        self._spawn = spawn

    def start(self, fn: Callable[..., Any], *args: Any) -> Job:
        scope = trio.CancelScope()
        done = trio.Event()
        job = TaskJob(scope.cancel, done.wait)

        async def runner() -> None:
            try:
                with scope:
                    job.value = await self.call(fn, *args)
            except Exception as exc:
                job.error = exc
            finally:
                done.set()

        self._spawn(runner)
        return job

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    async def wait_running(self, job: Job, marker: Path) -> None:
        await wait_for_file(marker)


class TrioParallelPool(_ScopedPool):
    def __init__(self, ctx: Any, limiter: trio.CapacityLimiter, nursery: trio.Nursery) -> None:
        super().__init__(nursery.start_soon)
        self.ctx = ctx
        self.limiter = limiter

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.ctx.run_sync(fn, *args, kill_on_cancel=True, limiter=self.limiter)


@asynccontextmanager
async def open_trio_parallel(workers: int) -> AsyncIterator[Pool]:
    # idle_timeout=inf: workers are kept for the whole measurement; init/retire stay no-ops.
    async with trio_parallel.open_worker_context(idle_timeout=math.inf) as ctx, trio.open_nursery() as nursery:
        yield TrioParallelPool(ctx, trio.CapacityLimiter(workers), nursery)
        nursery.cancel_scope.cancel()  # kills anything still running (kill_on_cancel)


class AnyioPool(_ScopedPool):
    def __init__(self, limiter: anyio.CapacityLimiter, tg: anyio.abc.TaskGroup) -> None:
        super().__init__(tg.start_soon)
        self.limiter = limiter

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_process.run_sync(fn, *args, cancellable=True, limiter=self.limiter)


@asynccontextmanager
async def open_anyio(workers: int) -> AsyncIterator[Pool]:
    async with anyio.create_task_group() as tg:
        yield AnyioPool(anyio.CapacityLimiter(workers), tg)
        tg.cancel_scope.cancel()


class FuturePool:
    """ProcessPoolExecutor or pebble.ProcessPool, driven from trio."""

    def __init__(self, submit: Callable[..., Any], can_cancel: bool) -> None:
        self.submit = submit
        self.can_cancel = can_cancel

    def start(self, fn: Callable[..., Any], *args: Any) -> Job:
        return FutureJob(self.submit(fn, *args))

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await FutureJob(self.submit(fn, *args)).result()

    async def wait_running(self, job: Job, marker: Path) -> None:
        await wait_for_file(marker)


@asynccontextmanager
async def open_ppe(workers: int) -> AsyncIterator[Pool]:
    ex = ProcessPoolExecutor(max_workers=workers)
    try:
        yield FuturePool(ex.submit, can_cancel=False)
    finally:
        # The executor cannot stop a running job; at teardown only, kill its workers so
        # leftover slow jobs do not hold the measurement up.
        procs = list((ex._processes or {}).values())
        ex.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.kill()
        ex.shutdown(wait=True)


@asynccontextmanager
async def open_pebble(workers: int) -> AsyncIterator[Pool]:
    pool = pebble.ProcessPool(max_workers=workers)

    def submit(fn: Callable[..., Any], *args: Any) -> Any:
        return pool.schedule(fn, args)

    try:
        yield FuturePool(submit, can_cancel=True)
    finally:
        pool.stop()  # type: ignore[no-untyped-call]  # stops the workers, running jobs included
        pool.join(timeout=30)


async def ppe_scale(p: Params) -> Numbers:
    """Reference for genro's scale metric: p.size futures queued at once on a ProcessPoolExecutor."""
    n = p.size
    rates: list[float] = []
    per_task = 0.0
    async with open_ppe(p.workers) as pool:
        assert isinstance(pool, FuturePool)
        await call_many(pool, bench_jobs.double, [(i,) for i in range(min(n, 1000))])  # warm-up, untimed
        for batch in range(p.repeat):
            gc.collect()
            if batch == 0:
                tracemalloc.start()
                before = tracemalloc.get_traced_memory()[0]
            jobs = [FutureJob(pool.submit(bench_jobs.double, i)) for i in range(n)]
            if batch == 0:
                per_task = (tracemalloc.get_traced_memory()[0] - before) / n
                tracemalloc.stop()
            # The executor's own thread starts working during the submits: count only what is left.
            t0 = now()
            left = sum(not job.fut.done() for job in jobs)
            total = 0
            for job in jobs:
                total += await job.result()
            rates.append(left / (now() - t0))
            if total != n * (n - 1):
                raise RuntimeError("wrong results")
    return {"bytes_per_task": per_task, "drain_tps": statistics.median(rates), "batches": float(len(rates))}


OPENERS: dict[str, PoolOpener] = {
    "trio_parallel": open_trio_parallel,
    "anyio": open_anyio,
    "ppe": open_ppe,
    "pebble": open_pebble,
}
