"""What the measurement modules share: parameters, the pool interface, small helpers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

#: One measurement's numbers, by name (seconds, ms, tasks/s, ...).
Numbers = dict[str, float]


@dataclass(frozen=True)
class Params:
    """The arguments of one measurement (from the _measure.py command line)."""

    workers: int = 2
    size: int = 0
    calls: int = 300
    warmup: int = 20
    repeat: int = 1
    tmpdir: Path = Path("/tmp")


class Job(Protocol):
    """One submitted job, as a library lets you hold it."""

    async def reported_running(self) -> bool | None:
        """Whether the library says the job is running (None: it exposes no state)."""

    async def result(self) -> Any:
        """Wait for the job and return its value."""

    async def cancel(self) -> None:
        """Cancel the running job; return when the library's call returns or future is done."""


class Pool(Protocol):
    """The same small surface over every library, so every metric runs the same code."""

    #: True if a *running* job can be cancelled.
    can_cancel: bool

    def start(self, fn: Callable[..., Any], *args: Any) -> Job:
        """Submit ``fn(*args)`` without waiting."""

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Submit ``fn(*args)`` and wait, the shortest way the library offers."""

    async def run_batch(self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``fn(*a)`` for every ``a`` at once, the best way the library offers; results in order."""

    async def wait_running(self, job: Job, marker: Path) -> None:
        """Wait until ``job`` (a :func:`bench_jobs.sleep_marked`) is truly running."""


PoolOpener = Callable[[int], AbstractAsyncContextManager[Pool]]


async def call_many(pool: Pool, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Submit every job at once through ``pool.start``, then wait for all of them in order.

    Cancellation:
        Cancellable; jobs already started are left to the pool's exit.
    """
    jobs = [pool.start(fn, *a) for a in args]
    return [await job.result() for job in jobs]


async def wait_for_file(path: Path, timeout: float = 60.0) -> None:
    """Poll every millisecond until ``path`` exists (the peer side of "is it running?")."""
    with trio.fail_after(timeout):
        while not os.path.exists(path):  # noqa: ASYNC110, ASYNC240 - a 1 ms poll of a tiny local check
            await trio.sleep(0.001)


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux >= 5.3), or None where the platform has none.

    Open it *before* the process may exit: the pidfd then names that process for good
    (no pid reuse), and becomes readable the moment it exits, zombie or reaped.
    """
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise RuntimeError(f"process {pid} exited before it could be watched") from None
    except OSError:  # ENOSYS: a kernel without pidfds
        return None


async def wait_gone(pidfd: int, timeout: float = 30.0) -> None:
    """Wait until the process behind ``pidfd`` has exited: woken by the kernel, no polling.

    Cancellation:
        Cancellable; the pidfd stays open (the caller closes it).
    """
    with trio.fail_after(timeout):
        await trio.lowlevel.wait_readable(pidfd)


def future_event(fut: Future[Any]) -> trio.Event:
    """A trio.Event set (from the trio thread) once ``fut`` is done: how the seed awaited futures."""
    token = trio.lowlevel.current_trio_token()
    event = trio.Event()

    def done(_: Future[Any]) -> None:
        try:
            token.run_sync_soon(event.set)
        except trio.RunFinishedError:
            pass

    fut.add_done_callback(done)
    return event


class FutureJob:
    """A concurrent.futures future (ProcessPoolExecutor, pebble) awaited from trio."""

    def __init__(self, fut: Future[Any]) -> None:
        self.fut = fut
        self.done = future_event(fut)

    async def reported_running(self) -> bool | None:
        await trio.lowlevel.checkpoint()
        return self.fut.running()

    async def result(self) -> Any:
        await self.done.wait()
        return self.fut.result()

    async def cancel(self) -> None:
        if not self.fut.cancel():
            raise RuntimeError("the library refused to cancel the future")
        await self.done.wait()


def read_pid(marker: Path) -> int:
    return int(marker.read_text())


def now() -> float:
    return time.perf_counter()
