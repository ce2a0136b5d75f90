"""The TaskManager facade: the public API over the supervisor.

It keeps the registry of task records, validates input, and asks the
supervisor to act. It never changes a task's state itself.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar, overload

import trio

from genro_tasks_worker._protocol import PICKLE_PROTOCOL

from ._errors import ManagerClosed, QueueFull, UnpicklableJob
from ._supervisor import Supervisor, default_context
from ._task import TaskInfo, TaskManagerStatistics, TaskRecord, TaskStatus
from ._watch import ChangeStream, TaskWatcher

T = TypeVar("T")

log = logging.getLogger("genro_tasks")

#: How long ``run()`` waits, shielded, for the kill of a task whose caller was cancelled.
_CANCEL_LIMIT = 10.0


def _check_count(name: str, value: object, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, not {value!r}")


_NAMES: dict[Any, str] = {}


def _func_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a job function, one shared string per function."""
    try:
        return _NAMES[func]
    except (KeyError, TypeError):
        pass
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__qualname__
    module = getattr(func, "__module__", None)
    text = f"{module}.{name}" if module and module != "builtins" else str(name)
    try:
        if len(_NAMES) >= 4096:
            _NAMES.clear()
        _NAMES[func] = text
    except TypeError:  # unhashable callable
        pass
    return text


class TaskManager:
    """Run functions in dedicated worker processes and track every task precisely.

    A supervisor task (a trio system task, so no nursery is needed) owns
    ``max_workers`` worker processes and the queue. A task is PENDING until a
    worker says it started the job, then RUNNING, then exactly one of
    COMPLETED, FAILED or CANCELLED. Cancelling a running task kills its
    worker process and everything the job spawned.

    Example::

        async with TaskManager(max_workers=2) as tm:
            task_id = tm.submit(export_report, 123, format="pdf")
            print(await tm.status(task_id))
            path = await tm.result(task_id)

    Args:
        max_workers: Number of worker processes; ``None`` means ``os.cpu_count()``.
        start_method: ``"forkserver"`` (default: a worker starts in a few
            milliseconds) or ``"spawn"`` (a fresh interpreter per worker).
        initializer: Called as ``initializer(*initargs)`` in every new
            worker before it takes tasks (must be picklable).
        initargs: Arguments for ``initializer``.
        max_tasks_per_worker: Replace a worker after it ran this many tasks
            (``None``: never).
        max_queued: Most tasks allowed to wait in the queue at once;
            ``submit`` raises QueueFull beyond it, ``submit_wait`` waits.
            ``None``: unbounded.
        max_finished: Most finished tasks (with their results) kept for
            ``info``/``result``; the oldest finished are forgotten first.
        finished_ttl: Seconds a finished task is kept (``None``: no age limit).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        start_method: str = "forkserver",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_queued: int | None = None,
        max_finished: int = 10_000,
        finished_ttl: float | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        _check_count("max_workers", max_workers, allow_none=False)
        _check_count("max_tasks_per_worker", max_tasks_per_worker)
        _check_count("max_queued", max_queued)
        _check_count("max_finished", max_finished, allow_none=False)
        if finished_ttl is not None and not (isinstance(finished_ttl, int | float) and 0 < finished_ttl < math.inf):
            raise ValueError(f"finished_ttl must be a positive number of seconds or None, not {finished_ttl!r}")
        if initializer is not None:
            if not callable(initializer):
                raise TypeError(f"initializer must be callable, not {initializer!r}")
            try:
                pickle.dumps((initializer, initargs), PICKLE_PROTOCOL)
            except Exception as exc:
                raise UnpicklableJob(
                    f"initializer {_func_name(initializer)} or its initargs cannot be sent to worker processes: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        self._max_workers = max_workers
        self._ctx = default_context(start_method)
        self._start_method = start_method
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks = max_tasks_per_worker
        self._max_queued = max_queued
        self._rejected = 0
        self._max_finished = max_finished
        self._finished_ttl = finished_ttl
        self._records: dict[str, TaskRecord] = {}
        self._finished: deque[TaskRecord] = deque()
        self._sup: Supervisor | None = None
        self._running = False
        self._shut_down = False
        self._seq = 0
        self._changed: trio.Event | None = None
        self._streams: weakref.WeakSet[ChangeStream] = weakref.WeakSet()

    # ------------------------------------------------------------------ lifespan
    @property
    def is_running(self) -> bool:
        """True between a successful ``startup()`` and the start of ``shutdown()``.

        Also False once the supervisor has failed (see SupervisorFailed).
        """
        return self._running and self._sup is not None and self._sup.failed is None

    @property
    def max_workers(self) -> int:
        """The number of worker processes this manager keeps."""
        return self._max_workers

    async def startup(self) -> None:
        """Start the supervisor and the worker processes; return when all are ready.

        Callable from any trio task (an ASGI lifespan handler, a pytest-trio
        fixture): the supervisor runs as a trio system task, so no nursery
        is needed. Calling it on a running manager does nothing.

        Raises:
            RuntimeError: The worker processes could not be started (the
                message says why); nothing is left running.

        **Cancellation:** If cancelled, the workers started so far are killed
        and the manager stays stopped.
        """
        if self._running:
            return
        if self._sup is not None:
            if not self._shut_down and not self._sup.finished.is_set():
                await self._sup.wait_ready()  # a concurrent startup(): share its outcome
                return
            raise RuntimeError("this TaskManager was shut down; create a new one")
        sup = Supervisor(
            self._max_workers,
            self._ctx,
            self._note_change,
            initializer=self._initializer,
            initargs=self._initargs,
            max_tasks_per_worker=self._max_tasks,
        )
        self._sup = sup
        trio.lowlevel.spawn_system_task(sup.run, name="genro_tasks supervisor")
        try:
            await sup.wait_ready()
        except BaseException:
            with trio.CancelScope(shield=True):
                await sup.stop(wait=False, cancel_pending=True)
            raise
        self._running = True
        log.info("TaskManager started with %d %s workers", self._max_workers, self._start_method)

    async def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop accepting tasks, settle the ones in flight, and stop every worker.

        Args:
            wait: If True, running tasks finish normally (and queued ones
                too, unless ``cancel_pending``). If False, queued tasks are
                CANCELLED and running ones are killed and recorded CANCELLED.
            cancel_pending: If True, queued tasks are CANCELLED at once.

        After it returns no worker process remains, ``submit`` raises
        :class:`ManagerClosed`, and ``info``/``result`` still answer for
        every task. Calling it again does nothing.

        **Cancellation:** If cancelled while waiting for tasks to finish, it
        kills every worker (shielded), records their tasks CANCELLED, and
        then lets the cancellation through: no process is left behind.
        """
        sup = self._sup
        if sup is None:
            return
        self._running = False
        self._shut_down = True
        try:
            await sup.stop(wait=wait, cancel_pending=cancel_pending)
        finally:
            for stream in list(self._streams):
                stream.close()
            self._note_change(None)

    async def __aenter__(self) -> TaskManager:
        """Start the manager (see :meth:`startup`).

        **Cancellation:** As :meth:`startup`: the workers started so far are killed.
        """
        await self.startup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Shut down: waiting for tasks on a clean exit, killing them if the block raised.

        **Cancellation:** As :meth:`shutdown`: if cancelled while waiting, every
        worker is killed (shielded) before the cancellation goes through.
        """
        await self.shutdown(wait=exc_type is None)

    # -------------------------------------------------------------------- submit
    def submit(
        self,
        func: Callable[..., Any],
        *args: Any,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
        priority: int = 0,
        memory_limit: int | None = None,
        **kwargs: Any,
    ) -> str:
        """Queue ``func(*args, **kwargs)`` to run in a worker process; never blocks.

        The function and its arguments are pickled right here, so later
        changes to the arguments do not reach the job, and anything that
        cannot cross into another process is refused before a record exists.

        Args:
            func: A picklable callable: a module-level function, or an
                instance of a module-level class with ``__call__``.
            *args: Positional arguments for ``func``.
            task_id: Your own id for the task (a non-empty str), or None to
                get a fresh UUID.
            metadata: Anything you want to find again in ``info()``.
            timeout: Seconds the task may run (counted from RUNNING) before
                its worker is killed and the task FAILED with TaskTimeout.
            priority: Higher runs first; equal priorities run in submission order.
            memory_limit: Bytes of memory the job may allocate on top of what
                its worker already uses; beyond it the job gets MemoryError
                and the task fails with MemoryLimitExceeded.
            **kwargs: Keyword arguments for ``func``.

        Returns:
            The task id.

        Raises:
            ManagerClosed: The manager is not running (a RuntimeError).
            QueueFull: ``max_queued`` tasks are already waiting (a RuntimeError).
            ValueError: ``task_id`` is already used, or ``timeout``,
                ``priority`` or ``memory_limit`` is out of range.
            UnpicklableJob: ``func`` or an argument cannot be pickled (a TypeError).
        """
        sup = self._sup
        if not self._running or sup is None or not sup.accepting:
            raise self._closed_error()
        if self._max_queued is not None and sup.queued >= self._max_queued:
            self._rejected += 1
            raise QueueFull(
                f"{sup.queued} tasks are already queued (max_queued={self._max_queued}); retry later, "
                "or use 'await tm.submit_wait(...)' to wait for room"
            )
        if task_id is None:
            task_id = str(uuid.uuid4())
        elif not isinstance(task_id, str) or not task_id:
            raise ValueError(f"task_id must be a non-empty str, not {task_id!r}")
        elif task_id in self._records:
            raise ValueError(
                f"Task id {task_id!r} is already in use; pass a different task_id, or omit it to get a fresh one"
            )
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
                raise ValueError(f"timeout for task {task_id!r} must be a positive number of seconds, not {timeout!r}")
            timeout = float(timeout)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority for task {task_id!r} must be an int, not {priority!r}")
        if memory_limit is not None and (
            isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit <= 0
        ):
            raise ValueError(f"memory_limit for task {task_id!r} must be a positive int (bytes), not {memory_limit!r}")
        if not callable(func):
            raise TypeError(f"Task {task_id!r}: {func!r} is not callable")
        name = _func_name(func)
        try:
            payload = pickle.dumps((func, args, kwargs, memory_limit), PICKLE_PROTOCOL)
        except Exception as exc:
            raise UnpicklableJob(
                f"Task {task_id!r} ({name}) cannot be sent to a worker process: {type(exc).__name__}: {exc}. "
                "The function must be importable by name (a module-level def, not a lambda, closure or "
                "local function) and every argument must be picklable."
            ) from exc
        self._seq += 1
        rec = TaskRecord(
            self._seq, task_id, name, payload, dict(metadata) if metadata else None, timeout, priority, memory_limit
        )
        self._records[task_id] = rec
        sup.enqueue(rec)
        self._note_change(rec)
        return task_id

    async def submit_wait(
        self,
        func: Callable[..., Any],
        *args: Any,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
        priority: int = 0,
        memory_limit: int | None = None,
        **kwargs: Any,
    ) -> str:
        """Like :meth:`submit`, but wait for room when ``max_queued`` tasks are queued.

        Raises what :meth:`submit` raises, except QueueFull.

        **Cancellation:** If cancelled while waiting for room, nothing was
        submitted.
        """
        while True:
            sup = self._sup
            if (
                self._max_queued is None
                or sup is None
                or not self._running
                or not sup.accepting
                or sup.queued < self._max_queued
            ):
                await trio.lowlevel.checkpoint_if_cancelled()
                return self.submit(
                    func,
                    *args,
                    task_id=task_id,
                    metadata=metadata,
                    timeout=timeout,
                    priority=priority,
                    memory_limit=memory_limit,
                    **kwargs,
                )
            await self._wait_change()

    def _closed_error(self) -> ManagerClosed:
        sup = self._sup
        if sup is None:
            return ManagerClosed(
                "TaskManager not started: await tm.startup() first (or use 'async with TaskManager()')"
            )
        if sup.failed is not None:
            return ManagerClosed(f"TaskManager stopped because its supervisor failed: {sup.failed!r}")
        return ManagerClosed("TaskManager is shut down: it accepts no new tasks; create and start a new one")

    # ------------------------------------------------------------------- queries
    def _get(self, task_id: str) -> TaskRecord:
        try:
            return self._records[task_id]
        except (KeyError, TypeError):
            raise KeyError(f"Task not found: {task_id}") from None

    async def status(self, task_id: str) -> TaskStatus:
        """Return the task's current status.

        Raises:
            KeyError: ``Task not found: <id>``.

        **Cancellation:** Returns at once; cancelling it has no effect on the task.
        """
        await trio.lowlevel.checkpoint()
        return self._get(task_id).status

    async def info(self, task_id: str) -> TaskInfo:
        """Return a snapshot of the task that never changes under you.

        Raises:
            KeyError: ``Task not found: <id>``.

        **Cancellation:** Returns at once; cancelling it has no effect on the task.
        """
        await trio.lowlevel.checkpoint()
        return self._get(task_id).snapshot()

    async def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait for the task to finish and return its value, or raise how it ended.

        Args:
            task_id: The task's id.
            timeout: Seconds to wait; ``None`` waits as long as it takes.

        Returns:
            What the job returned (a fresh unpickled object, cached per task).

        Raises:
            KeyError: ``Task not found: <id>``.
            TimeoutError: ``timeout`` ran out first; the task is left alone.
            TaskCancelled: The task was cancelled.
            TaskTimeout: The task exceeded its own ``timeout``.
            WorkerCrashed: Its worker process died mid-task.
            UnpicklableResult: It returned a value that cannot be pickled.
            RemoteError: It raised an exception that could not be transported.
            Exception: Whatever the job raised, with the worker's frames in
                its traceback and its chained causes.

        **Cancellation:** Cancelling the wait leaves the task running; use
        :meth:`run` if the task should die with its caller.
        """
        rec = self._get(task_id)
        if not rec.status.is_terminal:
            if timeout is None:
                await rec.wait_done()
            else:
                with trio.move_on_after(timeout):
                    await rec.wait_done()
                if not rec.status.is_terminal:
                    raise TimeoutError(
                        f"Task {task_id!r} did not finish within {timeout:g}s (it is {rec.status.value}); "
                        "it keeps going: call result() again to keep waiting, or cancel() it"
                    )
        else:
            await trio.lowlevel.checkpoint()
        return rec.outcome()

    async def cancel(self, task_id: str, *, grace: float | None = None) -> bool:
        """Cancel a task.

        A PENDING task is removed from the queue and recorded CANCELLED. A
        RUNNING task has its worker process killed (with every process its
        job started, by process group); once the worker is reaped the task is
        recorded CANCELLED, a fresh worker takes its slot, and only then does
        this return True. A task that already finished is left alone.

        With ``grace`` (seconds), a RUNNING job is first asked to stop: its
        worker gets SIGTERM, which raises
        :class:`~genro_tasks_worker.CancelRequested` inside the job (for an
        ``async def`` job, its trio scope is cancelled). If the job ends by
        raising, the task is CANCELLED; if it returns a value anyway, it is
        COMPLETED and this returns False; if it is still running when the
        grace period ends, its worker is killed as above.

        Returns:
            True if the task is now CANCELLED through this call (or a
            concurrent cancel); False if it had already finished otherwise.

        Raises:
            KeyError: ``Task not found: <id>``.

        **Cancellation:** The kill is already under way when this starts
        waiting; cancelling the wait does not stop it, and the task still
        ends CANCELLED.
        """
        rec = self._get(task_id)
        if grace is not None and not (isinstance(grace, int | float) and 0 <= grace < math.inf):
            raise ValueError(f"grace for task {task_id!r} must be a non-negative number of seconds, not {grace!r}")
        sup = self._sup
        if sup is None or rec.status.is_terminal:
            await trio.lowlevel.checkpoint()
            return False
        sup.cancel(rec, grace)
        await rec.wait_done()
        return rec.status is TaskStatus.CANCELLED

    @overload
    async def run(
        self,
        func: Callable[..., Awaitable[T]],
        *args: Any,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
        priority: int = 0,
        memory_limit: int | None = None,
        **kwargs: Any,
    ) -> T: ...

    @overload
    async def run(
        self,
        func: Callable[..., T],
        *args: Any,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
        priority: int = 0,
        memory_limit: int | None = None,
        **kwargs: Any,
    ) -> T: ...

    async def run(
        self,
        func: Callable[..., Any],
        *args: Any,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
        priority: int = 0,
        memory_limit: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Submit ``func(*args, **kwargs)`` and wait for its result, in one call.

        Takes the same arguments as :meth:`submit` and returns or raises as
        :meth:`result` does.

        **Cancellation:** If the calling scope is cancelled, the task is
        hard-cancelled: its worker is killed and reaped, and the task is
        recorded CANCELLED, before ``run`` lets the cancellation through.
        """
        tid = self.submit(
            func,
            *args,
            task_id=task_id,
            metadata=metadata,
            timeout=timeout,
            priority=priority,
            memory_limit=memory_limit,
            **kwargs,
        )
        rec = self._records[tid]
        try:
            await rec.wait_done()
        finally:
            if not rec.status.is_terminal and self._sup is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(_CANCEL_LIMIT):
                    self._sup.cancel(rec)
                    await rec.wait_done()
        return rec.outcome()

    def list_tasks(self, status: TaskStatus | None = None) -> list[TaskInfo]:
        """Return snapshots of all tracked tasks, oldest first, optionally of one status."""
        self._prune()
        if status is None:
            return [rec.snapshot() for rec in self._records.values()]
        status = TaskStatus(status)
        return [rec.snapshot() for rec in self._records.values() if rec.status is status]

    def clear_completed(self) -> int:
        """Forget every finished (COMPLETED, FAILED, CANCELLED) task; return how many."""
        done = [tid for tid, rec in self._records.items() if rec.status.is_terminal]
        for tid in done:
            del self._records[tid]
        self._finished.clear()
        return len(done)

    def statistics(self) -> TaskManagerStatistics:
        """Return a frozen snapshot of the manager's counters (trio's ``statistics()`` convention)."""
        sup = self._sup
        self._prune()
        if sup is None:
            return TaskManagerStatistics(0, 0, 0, 0, 0, 0, 0, 0, len(self._records), 0, 0, self._rejected)
        return dataclasses.replace(sup.statistics(len(self._records)), tasks_rejected=self._rejected)

    def _prune(self) -> None:
        """Apply the retention limits: forget the oldest finished tasks first."""
        finished = self._finished
        records = self._records
        while len(finished) > self._max_finished:
            rec = finished.popleft()
            if records.get(rec.task_id) is rec:
                del records[rec.task_id]
        ttl = self._finished_ttl
        if ttl is not None and finished:
            cutoff = trio.current_time() - ttl
            while finished and finished[0].finished_at <= cutoff:
                rec = finished.popleft()
                if records.get(rec.task_id) is rec:
                    del records[rec.task_id]

    def watch(self, task_id: str) -> TaskWatcher:
        """Follow one task live: ``async for info in tm.watch(task_id): ...``.

        The iterator yields the current :class:`TaskInfo` at once, then a
        new snapshot for every change (status or progress), and ends after
        the terminal snapshot. A slow reader may skip intermediate progress
        values, never a status change or the final snapshot. Leaving the
        loop early releases everything.

        Raises:
            KeyError: ``Task not found: <id>`` (raised by this call).
        """
        rec = self._get(task_id)
        watcher = TaskWatcher(rec)
        if not rec.status.is_terminal:
            if rec.watchers is None:
                rec.watchers = weakref.WeakSet()
            rec.watchers.add(watcher)
        return watcher

    def open_change_stream(self, *, max_pending: int = 10_000) -> ChangeStream:
        """Subscribe to every change of every task (for dashboards and logs).

        Use as ``async with tm.open_change_stream() as changes:`` and then
        ``async for info in changes:``. Each item is the *newest*
        :class:`TaskInfo` of a task that changed since you last read it, so
        a reader that stalls never blocks the supervisor, and buffers at
        most ``max_pending`` tasks (oldest dropped first, counted in
        ``changes.dropped``). Any number of streams may be open at once;
        the stream ends when the manager shuts down or when the ``async
        with`` block exits.
        """
        stream = ChangeStream(max_pending)
        if self._sup is not None and self._sup.finished.is_set():
            stream.close()
        else:
            self._streams.add(stream)
        return stream

    def _note_change(self, rec: TaskRecord | None) -> None:
        # Called for every transition: keep the common path (nobody watching) short.
        if rec is not None:
            terminal = rec.status.is_terminal
            if terminal and not rec.noted:
                rec.noted = True
                rec.finished_at = trio.current_time()
                self._finished.append(rec)
                if len(self._finished) > self._max_finished or self._finished_ttl is not None:
                    self._prune()
            watchers = rec.watchers
            if watchers:
                info = rec.snapshot()
                for watcher in watchers:
                    watcher._push(info)
                if terminal:
                    rec.watchers = None
            if self._streams:
                for stream in self._streams:
                    stream._push(rec)
        elif self._sup is not None and self._sup.failed is not None and self._streams:
            for stream in list(self._streams):  # nothing more will change: end the streams
                stream.close()
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    async def _wait_change(self) -> None:
        """Wait for the next change of any task (used by watchers and tests)."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()
