"""Pool adapters for the peer libraries, each driven as its best users would drive it.

* trio_parallel: one ``open_worker_context`` held open for the whole measurement; a batch
  is sent down a memory channel read by one consumer task per worker, each awaiting
  ``ctx.run_sync(kill_on_cancel=True)`` under a ``CapacityLimiter(workers)``.
* anyio: ``anyio.to_process.run_sync(cancellable=True)`` under a ``CapacityLimiter(workers)``,
  a batch fed the same way through a memory object stream (anyio on its trio backend).
* ppe: ``ProcessPoolExecutor``; a batch is ``submit`` of every job, then ``as_completed``
  in one helper thread; a single call awaits its future through a done-callback.
* pebble: ``pebble.ProcessPool.schedule``, futures awaited the same ways; ``future.cancel()`` kills.

Each opener takes the capacity and an optional start method (None: the library's default):
trio_parallel and the two futures pools accept forkserver; anyio has no such option.
"""

from __future__ import annotations

import functools
import gc
import math
import multiprocessing
import statistics
import tracemalloc
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_process
import pebble
import trio
import trio_parallel

import bench_jobs
from _common import FutureJob, Job, Numbers, Params, Pool, PoolOpener, call_many, now, wait_for_file

_CANCELLED: Any = object()


class _Scope(Protocol):
    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> bool | None: ...

    def cancel(self) -> None: ...


class _Event(Protocol):
    def set(self) -> None: ...

    async def wait(self) -> Any: ...


class QueuedJob:
    """A job waiting in (or taken from) a consumer pool's channel, with its own cancel scope."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], scope: _Scope, done: _Event) -> None:
        self.fn = fn
        self.args = args
        self.scope = scope
        self.done = done
        self.value: Any = _CANCELLED
        self.error: BaseException | None = None

    async def reported_running(self) -> bool | None:
        return None  # the library exposes no job state

    async def result(self) -> Any:
        """The job's value (its exception re-raised; RuntimeError if it was cancelled).

        Cancellation:
            Cancellable; only the wait is abandoned, the job goes on.
        """
        await self.done.wait()
        if self.error is not None:
            raise self.error
        if self.value is _CANCELLED:
            raise RuntimeError("job was cancelled")
        return self.value

    async def cancel(self) -> None:
        """Cancel the scope around the job's call (the library kills its worker) and wait until it returned.

        Cancellation:
            Cancellable; the job's scope is cancelled already.
        """
        self.scope.cancel()
        await self.done.wait()


class ConsumerPool:
    """trio_parallel or anyio: single calls awaited directly, batches fed to a few consumer tasks.

    ``run`` is the library's call; ``send`` the sending end of an unbounded channel whose
    receiving end :meth:`consume` reads (one consumer per worker). Cancelling a job cancels
    the scope around its call, so the library kills the worker running it.
    """

    can_cancel = True

    def __init__(
        self,
        run: Callable[..., Any],
        send: Any,
        scope: Callable[[], _Scope],
        event: Callable[[], _Event],
    ) -> None:
        self._run = run
        self._send = send
        self._scope = scope
        self._event = event

    def start(self, fn: Callable[..., Any], *args: Any) -> Job:
        job = QueuedJob(fn, args, self._scope(), self._event())
        self._send.send_nowait(job)
        return job

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` through the library's own call, awaited directly.

        Cancellation:
            Cancelling kills the worker running the job (the library's kill-on-cancel).
        """
        return await self._run(fn, *args)

    async def run_batch(self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Queue every job on the channel, then wait for their results in order.

        Cancellation:
            Cancellable; queued jobs are left to the consumers until the pool closes.
        """
        return await call_many(self, fn, args)

    async def wait_running(self, job: Job, marker: Path) -> None:
        await wait_for_file(marker)

    async def consume(self, receive: Any) -> None:
        """Run the jobs of the channel one after the other until the pool closes.

        Cancellation:
            Cancelled by the pool's exit; a job's own cancel only ends that job.
        """
        async with receive:
            async for job in receive:
                try:
                    with job.scope:
                        job.value = await self._run(job.fn, *job.args)
                except Exception as exc:
                    job.error = exc
                finally:
                    job.done.set()


_WORKER_TYPES = {None: "SPAWN", "spawn": "SPAWN", "forkserver": "FORKSERVER"}


@asynccontextmanager
async def open_trio_parallel(workers: int, start: str | None = None) -> AsyncIterator[Pool]:
    worker_type = getattr(trio_parallel.WorkerType, _WORKER_TYPES[start])
    limiter = trio.CapacityLimiter(workers)
    # idle_timeout=inf: workers are kept for the whole measurement; init/retire stay no-ops.
    async with (
        trio_parallel.open_worker_context(idle_timeout=math.inf, worker_type=worker_type) as ctx,
        trio.open_nursery() as nursery,
    ):
        send, receive = trio.open_memory_channel[QueuedJob](math.inf)
        run = functools.partial(ctx.run_sync, kill_on_cancel=True, limiter=limiter)
        pool = ConsumerPool(run, send, trio.CancelScope, trio.Event)
        for _ in range(workers):
            nursery.start_soon(pool.consume, receive.clone())
        receive.close()
        yield pool
        nursery.cancel_scope.cancel()  # kills anything still running (kill_on_cancel)


@asynccontextmanager
async def open_anyio(workers: int, start: str | None = None) -> AsyncIterator[Pool]:
    if start is not None:
        raise ValueError("anyio.to_process has no start-method option")
    limiter = anyio.CapacityLimiter(workers)
    async with anyio.create_task_group() as tg:
        send, receive = anyio.create_memory_object_stream[QueuedJob](math.inf)
        run = functools.partial(anyio.to_process.run_sync, cancellable=True, limiter=limiter)
        pool = ConsumerPool(run, send, anyio.CancelScope, anyio.Event)
        for _ in range(workers):
            tg.start_soon(pool.consume, receive.clone())
        receive.close()
        yield pool
        tg.cancel_scope.cancel()


class FuturePool:
    """ProcessPoolExecutor or pebble.ProcessPool, driven from trio."""

    def __init__(self, submit: Callable[..., Future[Any]], can_cancel: bool) -> None:
        self.submit = submit
        self.can_cancel = can_cancel

    def start(self, fn: Callable[..., Any], *args: Any) -> Job:
        return FutureJob(self.submit(fn, *args))

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await FutureJob(self.submit(fn, *args)).result()

    async def run_batch(self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Submit every job, then wait for the whole batch in one helper thread (``as_completed``).

        Cancellation:
            Cancellable; the helper thread is abandoned and the futures left to the pool's exit.
        """
        futures = [self.submit(fn, *a) for a in args]

        def drain() -> None:
            for _ in as_completed(futures):
                pass

        # One thread wakes trio once for the whole batch (not one callback per future).
        await trio.to_thread.run_sync(drain, abandon_on_cancel=True)
        return [f.result() for f in futures]

    async def wait_running(self, job: Job, marker: Path) -> None:
        await wait_for_file(marker)


def _context(start: str | None) -> Any:
    return multiprocessing.get_context(start)


@asynccontextmanager
async def open_ppe(workers: int, start: str | None = None) -> AsyncIterator[Pool]:
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=_context(start))
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
async def open_pebble(workers: int, start: str | None = None) -> AsyncIterator[Pool]:
    pool = pebble.ProcessPool(max_workers=workers, context=_context(start))

    def submit(fn: Callable[..., Any], *args: Any) -> Any:
        return pool.schedule(fn, args)

    try:
        yield FuturePool(submit, can_cancel=True)
    finally:
        pool.stop()  # type: ignore[no-untyped-call]  # stops the workers, running jobs included
        pool.join(timeout=30)


async def ppe_scale(p: Params, start: str | None = None) -> Numbers:
    """Reference for genro's scale metric: p.size futures queued at once on a ProcessPoolExecutor."""
    n = p.size
    rates: list[float] = []
    per_task = 0.0
    async with open_ppe(p.workers, start) as pool:
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


_FAMILIES = {"trio_parallel": open_trio_parallel, "anyio": open_anyio, "ppe": open_ppe, "pebble": open_pebble}


def opener(key: str) -> PoolOpener:
    """The pool opener of a peer variant (``family`` or ``family+start_method``)."""
    family, _, start = key.partition("+")
    return functools.partial(_FAMILIES[family], start=start or None)
