"""Helpers for testing code that uses a TaskManager, and genro-tasks itself.

Everything here reads the manager from the trio thread that runs it, and
every wait is woken by the manager's own change notifications, never by
polling::

    from genro_tasks import testing

    tid = tm.submit(job)
    with trio.fail_after(10):
        await testing.wait_for_status(tm, tid, TaskStatus.RUNNING)
    assert testing.worker_pids(tm)

:class:`FakeBackend` is an execution backend without processes: a test
drives it by hand (start a job, report progress, finish it, lose it) to
check the scheduler's promises in isolation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from genro_tasks_worker._protocol import Failure

from ._backend import (
    BackendListener,
    BackendStatistics,
    ExecutionBackend,
    Lost,
    Outcome,
    Raised,
    Returned,
    TooLarge,
    Undecodable,
    Unreturnable,
)
from ._manager import TaskManager
from ._task import TaskInfo, TaskStatus, live_watchers


def worker_pids(tm: TaskManager) -> frozenset[int]:
    """Pids of the manager's live worker processes (starting, idle, busy or stopping).

    Empty before ``startup()`` and once every worker has exited.
    """
    scheduler = tm._scheduler
    return scheduler.backend.worker_pids() if scheduler is not None else frozenset()


def assigned_worker_pid(tm: TaskManager, task_id: str) -> int | None:
    """Pid of the worker process the task was handed to, even before it reports RUNNING.

    None while it is queued and once it has finished.
    """
    scheduler = tm._scheduler
    if scheduler is None:
        return None
    return scheduler.backend.worker_of(tm._registry.get(task_id).seq)


def kill_requested(tm: TaskManager, task_id: str) -> bool:
    """True if the manager has asked for the kill of the task's worker and not yet seen it die.

    The kill signal is sent when it is asked; the task becomes CANCELLED
    once the worker is reaped.
    """
    scheduler = tm._scheduler
    if scheduler is None:
        return False
    return scheduler.kill_requested(tm._registry.get(task_id).seq)


def forkserver_pid() -> int | None:
    """Pid of this process's multiprocessing forkserver, if one is running.

    Workers start in a thread: while one is starting after the forkserver
    died, this may be None. Wait until :func:`worker_pids` shows the pool
    whole again before reading it.
    """
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


def snapshot(tm: TaskManager, task_id: str) -> TaskInfo:
    """The task's :class:`TaskInfo` now, without awaiting (for predicates of :func:`wait_until`).

    Raises:
        KeyError: ``Task not found: <id>``.
    """
    return tm._registry.get(task_id).snapshot()


def status(tm: TaskManager, task_id: str) -> TaskStatus:
    """The task's status now, without awaiting.

    Raises:
        KeyError: ``Task not found: <id>``.
    """
    return tm._registry.get(task_id).status


def change_count(tm: TaskManager, task_id: str) -> int:
    """How many changes (status or progress) the manager has recorded for the task so far."""
    return tm._registry.get(task_id).version


def watcher_count(tm: TaskManager, task_id: str) -> int:
    """How many live :meth:`~TaskManager.watch` iterators follow the task."""
    return live_watchers(tm._registry.get(task_id))


def stream_count(tm: TaskManager) -> int:
    """How many change streams (:meth:`~TaskManager.open_change_stream`) are open."""
    return tm._registry.hub.stream_count


def start_error(tm: TaskManager) -> BaseException | None:
    """Why the last worker failed to start, until a worker starts fine again (else None)."""
    scheduler = tm._scheduler
    return None if scheduler is None else scheduler.start_error


def store_tasks_tracked(tm: TaskManager) -> int:
    """How many tasks the manager's store writer keeps bookkeeping for (0 without a store).

    Only the tasks this process owns (inserted or claimed, not ended) stay: a
    task another process claimed or ended is dropped once this process reads
    that change. Bounded by what this process runs, not by what it submitted.
    """
    thread = getattr(tm._registry, "_thread", None)
    return 0 if thread is None else int(thread.tracked())


async def wait_until(tm: TaskManager, predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` is true, checking it after every change the manager records.

    A change is any task's transition or progress, a worker starting or
    exiting, or a change stream being opened. Wrap it in ``trio.fail_after`` if the condition may never hold.

    **Cancellation:** Only the wait is cancelled.
    """
    hub = tm._registry.hub
    while not predicate():
        await hub.wait_change()


async def wait_for_status(tm: TaskManager, task_id: str, wanted: TaskStatus) -> None:
    """Wait until the task has status ``wanted`` (it may be submitted after this call starts).

    Raises:
        AssertionError: The task reached another terminal status, so it
            will never be ``wanted``.

    **Cancellation:** Only the wait is cancelled.
    """

    def reached() -> bool:
        if task_id not in tm._registry:
            return False
        current = status(tm, task_id)
        if current is not wanted and current.is_terminal:
            raise AssertionError(f"task {task_id!r} ended {current.value}, it will never be {wanted.value}")
        return current is wanted

    await wait_until(tm, reached)


class FakeBackend(ExecutionBackend):
    """An execution backend with no processes, driven by the test.

    Jobs handed to it wait in :attr:`jobs` (key → payload) until the test
    calls :meth:`start`, :meth:`report_progress`, :meth:`finish`,
    :meth:`fail` or :meth:`lose`. Requests from the scheduler are recorded
    in :attr:`killed` and :attr:`interrupted`; a kill is "done" when the
    test calls :meth:`lose` (or at once with ``kill_at_once=True``).

    Args:
        capacity: How many jobs may run at once.
        kill_at_once: Report a killed job lost as soon as it is killed.
    """

    def __init__(self, capacity: int = 1, *, kill_at_once: bool = True) -> None:
        self.capacity = capacity
        self.kill_at_once = kill_at_once
        self.listener: BackendListener | None = None
        #: Jobs dispatched and not yet ended: key -> pickled payload.
        self.jobs: dict[int, bytes] = {}
        #: Keys the scheduler asked to kill / to interrupt, in order.
        self.killed: list[int] = []
        self.interrupted: list[int] = []
        #: Jobs that reported they started.
        self.started: set[int] = set()
        self.stopping = False
        self._stopped = trio.Event()

    async def serve(self, listener: BackendListener) -> None:
        """Report ready at once, then wait; on the way out every job left is lost.

        **Cancellation:** Cancelling it is how it stops (jobs in flight are reported lost).
        """
        self.listener = listener
        listener.all_ready()
        listener.capacity_changed()
        try:
            await trio.sleep_forever()
        finally:
            for key in list(self.jobs):
                self.lose(key)
            self._stopped.set()

    def free_slots(self) -> int:
        return 0 if self.stopping else self.capacity - len(self.jobs)

    def dispatch(self, key: int, payload: bytes) -> None:
        assert len(self.jobs) < self.capacity, "dispatched beyond capacity"
        self.jobs[key] = payload

    def interrupt(self, key: int) -> None:
        self.interrupted.append(key)

    def kill(self, key: int) -> None:
        self.killed.append(key)
        if self.kill_at_once and key in self.jobs:
            self.lose(key, exitcode=-9)

    def begin_stop(self) -> None:
        self.stopping = True
        if not self.jobs:
            self._stopped.set()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`begin_stop` was called and no job is left.

        **Cancellation:** Only the wait is cancelled.
        """
        await self._stopped.wait()

    def statistics(self) -> BackendStatistics:
        busy = len(self.jobs)
        return BackendStatistics(self.capacity, self.capacity - busy, busy, 0, 0)

    # --- driving it -----------------------------------------------------------
    def _listener(self) -> BackendListener:
        assert self.listener is not None, "the backend is not served yet"
        return self.listener

    def start(self, key: int, worker: int = 1) -> None:
        """The job ``key`` reports it started (on worker ``worker``)."""
        self.started.add(key)
        self._listener().started(key, worker)

    def report_progress(self, key: int, fraction: float | None = None, message: str | None = None) -> None:
        """The job ``key`` reports progress."""
        self._listener().progress(key, fraction, message)

    def finish(self, key: int, value: Any = None) -> None:
        """The job ``key`` returns ``value``."""
        self._end(key, Returned(value))

    def fail(self, key: int, type_name: str = "ValueError", message: str = "boom") -> None:
        """The job ``key`` raises (an exception that cannot be unpickled here)."""
        self._end(key, Raised(Failure(None, type_name, message, f"Traceback: {type_name}: {message}")))

    def end(self, key: int, outcome: Outcome) -> None:
        """The job ``key`` ends with any outcome (see :mod:`genro_tasks._backend`)."""
        self._end(key, outcome)

    def lose(self, key: int, *, exitcode: int | None = None, retryable: bool | None = None) -> None:
        """The worker of job ``key`` dies; ``retryable`` defaults to "it never reported started"."""
        self.jobs.pop(key)
        if retryable is None:
            retryable = key not in self.started
        self.started.discard(key)
        self._listener().lost(key, Lost(1, exitcode, "", retryable))
        self._after_end()

    def _end(self, key: int, outcome: Outcome) -> None:
        del self.jobs[key]
        self.started.discard(key)
        self._listener().done(key, outcome)
        self._after_end()

    def _after_end(self) -> None:
        if self.stopping and not self.jobs:
            self._stopped.set()


__all__ = (
    "FakeBackend",
    "Raised",
    "Returned",
    "TooLarge",
    "Undecodable",
    "Unreturnable",
    "assigned_worker_pid",
    "change_count",
    "forkserver_pid",
    "snapshot",
    "start_error",
    "status",
    "stream_count",
    "wait_for_status",
    "wait_until",
    "watcher_count",
    "worker_pids",
)
