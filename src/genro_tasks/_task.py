"""Task records: the public :class:`TaskStatus` and :class:`TaskInfo`, and the
mutable :class:`TaskRecord` behind them (its transitions are the scheduler's alone)."""

from __future__ import annotations

import enum
import pickle
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import trio

from genro_tasks_worker._protocol import Failure

from ._errors import RemoteError, TaskCancelled

if TYPE_CHECKING:
    from ._options import TaskOptions


class Sink(Protocol):
    """What follows a task's changes (a TaskWatcher, a completion iterator).

    Told of every change of the record, synchronously; it takes what it needs
    (a snapshot, or only the news that the task ended), so following many
    tasks to their end costs no snapshot per change.
    """

    def _push(self, rec: TaskRecord) -> None: ...


def follow(rec: TaskRecord, sink: weakref.ref[Sink]) -> None:
    """Register a sink (by its weak reference) to be told of every change of ``rec``.

    A sink following many tasks passes the same reference each time (a reference
    without callback is shared anyway). Dead references are swept each time the
    list doubles, so a long-lived task watched again and again stays small.
    """
    watchers = rec.watchers
    if watchers is None:
        rec.watchers = [sink]
        return
    n = len(watchers)
    if n >= 8 and not n & (n - 1):
        watchers[:] = [ref for ref in watchers if ref() is not None]
    watchers.append(sink)


def live_watchers(rec: TaskRecord) -> int:
    """How many sinks following ``rec`` are still alive."""
    watchers = rec.watchers
    return 0 if watchers is None else sum(1 for ref in watchers if ref() is not None)


class TaskStatus(enum.StrEnum):
    """Where a task is in its life.

    ``PENDING`` → ``RUNNING`` → one of ``COMPLETED`` / ``FAILED`` /
    ``CANCELLED``, or ``PENDING`` → ``CANCELLED``. A task with ``retries``
    whose attempt failed goes from RUNNING back to PENDING (its ``attempt``
    goes up): it is never FAILED between attempts. A terminal status is
    final for the attempt; only an operator's ``requeue()`` makes a finished
    task PENDING again, as a new attempt of the same task.
    """

    #: Queued, or handed to a worker that has not yet said it started the job.
    PENDING = "pending"
    #: A worker process reported that it started the job.
    RUNNING = "running"
    #: The job returned; ``result()`` gives its value.
    COMPLETED = "completed"
    #: The job raised, timed out, returned an unpicklable value, or its worker died.
    FAILED = "failed"
    #: Cancelled by ``cancel()`` or shutdown before it could finish.
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, FAILED and CANCELLED."""
        return self in _TERMINAL


_TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


def _moment(ts: float | None) -> datetime | None:
    """A UTC datetime from a ``time.time()`` value (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A snapshot of one task; it never changes after you receive it.

    Attributes:
        task_id: The id ``submit`` returned.
        status: The status when the snapshot was taken.
        created_at: When ``submit`` accepted the task (UTC).
        started_at: When a worker reported it started the job, else None.
        completed_at: When the task reached its terminal status, else None.
        error: ``"Type: message"`` of what made it FAILED or CANCELLED, else None.
        progress: Last fraction the job reported (0.0-1.0), else None.
        metadata: The ``metadata`` given to ``submit`` (a copy).
        name: Qualified name of the job function.
        worker_pid: Pid of the worker process that ran (or runs) it, else None.
        progress_message: Last message the job reported, else None.
        timeout: The task's own running-time limit in seconds, else None.
        priority: The task's priority (higher runs first).
        traceback: For a FAILED task whose job raised, the formatted remote
            traceback (the worker's frames), else None.
        group: The task's ``group`` option, else None.
        attempt: Which attempt this is, from 1 (retries and ``requeue()``
            add one each).
        previous_errors: ``"Type: message"`` of each earlier attempt's
            failure (or end), oldest first.
    """

    task_id: str
    status: TaskStatus
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    progress: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    worker_pid: int | None = None
    progress_message: str | None = None
    timeout: float | None = None
    priority: int = 0
    traceback: str | None = None
    group: str | None = None
    attempt: int = 1
    previous_errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A snapshot of one group of tasks (see ``TaskManager.group_info``).

    Counts cover every task submitted with this ``group`` since startup,
    by its status now (a task retrying counts as PENDING or RUNNING), even
    when retention has forgotten finished records.

    Attributes:
        group: The group's name.
        total: Tasks in the group.
        pending: Of those, PENDING (queued, or waiting to retry).
        running: RUNNING.
        completed: COMPLETED.
        failed: FAILED.
        cancelled: CANCELLED.
        progress: Aggregate progress from 0.0 to 1.0: the mean over the
            group's tasks of their progress, a finished task counting 1 and
            one that reported none counting 0.
        eta: Estimated seconds left (time since the group's first task was
            submitted, scaled by the progress still to make); 0.0 once every
            task finished; None before any progress is known.
    """

    group: str
    total: int
    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int
    progress: float
    eta: float | None

    @property
    def finished(self) -> int:
        """Tasks in a terminal status."""
        return self.completed + self.failed + self.cancelled

    @property
    def is_finished(self) -> bool:
        """True when every task of the group is in a terminal status."""
        return self.finished == self.total


@dataclass(frozen=True, slots=True)
class TaskManagerStatistics:
    """Counters of a TaskManager at one moment (see ``TaskManager.statistics()``).

    Attributes:
        workers_total: Worker processes alive (including starting and retiring ones).
        workers_idle: Workers ready and waiting for a task.
        workers_busy: Workers with a task assigned.
        tasks_queued: Tasks waiting in the queue.
        tasks_running: Tasks RUNNING right now.
        tasks_completed: Tasks that ended COMPLETED since startup.
        tasks_failed: Tasks that ended FAILED since startup.
        tasks_cancelled: Tasks that ended CANCELLED since startup.
        tasks_tracked: Task records currently kept (see retention limits).
        worker_restarts: Workers started to replace one that exited.
        worker_crashes: Workers that died without being asked to.
        tasks_rejected: ``submit`` calls refused with QueueFull (``max_queued``) since startup.
    """

    workers_total: int
    workers_idle: int
    workers_busy: int
    tasks_queued: int
    tasks_running: int
    tasks_completed: int
    tasks_failed: int
    tasks_cancelled: int
    tasks_tracked: int
    worker_restarts: int
    worker_crashes: int
    tasks_rejected: int = 0


class TaskRecord:
    """The live, mutable state of one task (internal); the registry keeps it, the scheduler changes it."""

    __slots__ = (
        "_done",
        "_failure",
        "_result",
        "attempt",
        "completed",
        "created",
        "error",
        "finished_at",
        "group",
        "group_status",
        "memory_limit",
        "metadata",
        "name",
        "noted",
        "options",
        "payload",
        "previous_errors",
        "priority",
        "progress",
        "progress_message",
        "requeues",
        "retries_left",
        "seq",
        "started",
        "status",
        "task_id",
        "timeout",
        "version",
        "watchers",
        "worker_pid",
    )

    def __init__(
        self,
        seq: int,
        task_id: str,
        name: str,
        payload: bytes,
        metadata: dict[str, Any] | None,
        timeout: float | None,
        priority: int = 0,
        memory_limit: int | None = None,
        options: TaskOptions | None = None,
    ) -> None:
        self.seq = seq
        self.task_id = task_id
        self.name = name
        self.status = TaskStatus.PENDING
        # Moments as time.time() floats: a transition stores one float, a snapshot (or the
        # store) converts it; the datetimes are the properties below.
        #: When submit accepted it.
        self.created = time.time()
        #: When a worker reported it started the job, else None.
        self.started: float | None = None
        #: When it reached its terminal status, else None.
        self.completed: float | None = None
        self.error: str | None = None
        self.progress: float | None = None
        self.progress_message: str | None = None
        self.metadata = metadata
        self.worker_pid: int | None = None
        self.timeout = timeout
        self.priority = priority
        self.payload: bytes | None = payload
        #: How often it was sent again because its worker died before starting it.
        self.requeues = 0
        self._result: Any = None
        self._failure: BaseException | Failure | None = None
        self._done: trio.Event | None = None
        self.version = 0
        #: Weak references to the TaskWatchers (and other sinks) of this task, created on first use
        #: (see :func:`follow`); dropped when it ends. A plain list: a WeakSet per task cost more than
        #: the rest of a gathered task's bookkeeping.
        self.watchers: list[weakref.ref[Sink]] | None = None
        self.memory_limit = memory_limit
        #: Set once the manager has accounted for this task's terminal state.
        self.noted = False
        #: trio clock time at which the manager saw the terminal state (retention).
        self.finished_at = 0.0
        #: The options it was submitted with (retry policy); None: the defaults.
        self.options = options
        self.group = options.group if options is not None else None
        #: How the registry counted it in its group: None (not yet), PENDING (live) or a terminal status.
        self.group_status: TaskStatus | None = None
        #: 1-based; each retry or requeue starts the next attempt.
        self.attempt = 1
        #: How many automatic retries are left.
        self.retries_left = options.retries if options is not None else 0
        #: "Type: message" of every earlier attempt's end, oldest first.
        self.previous_errors: tuple[str, ...] = ()

    # --- reading -----------------------------------------------------------
    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created, UTC)

    @property
    def started_at(self) -> datetime | None:
        return _moment(self.started)

    @property
    def completed_at(self) -> datetime | None:
        return _moment(self.completed)

    def snapshot(self) -> TaskInfo:
        return TaskInfo(
            task_id=self.task_id,
            status=self.status,
            created_at=datetime.fromtimestamp(self.created, UTC),
            started_at=_moment(self.started),
            completed_at=_moment(self.completed),
            error=self.error,
            progress=self.progress,
            metadata=dict(self.metadata) if self.metadata else {},
            name=self.name,
            worker_pid=self.worker_pid,
            progress_message=self.progress_message,
            timeout=self.timeout,
            priority=self.priority,
            traceback=self._traceback_text(),
            group=self.group,
            attempt=self.attempt,
            previous_errors=self.previous_errors,
        )

    def _traceback_text(self) -> str | None:
        failure = self._failure
        if failure is None:
            return None
        if isinstance(failure, Failure):
            return failure.traceback
        text = getattr(failure, "remote_traceback", None)
        return text if isinstance(text, str) and text else None

    async def wait_done(self) -> None:
        if self.status.is_terminal:
            return
        if self._done is None:
            self._done = trio.Event()
        await self._done.wait()

    def outcome(self) -> Any:
        """Return the job's value, or raise what the task ended with."""
        status = self.status
        if status is TaskStatus.COMPLETED:
            return self._result
        if status is TaskStatus.CANCELLED:
            raise TaskCancelled(self.task_id, self.error or "")
        failure = self._failure
        if isinstance(failure, BaseException):
            raise _fresh(failure)
        if failure is None:  # pragma: no cover
            raise AssertionError(f"task {self.task_id!r} is {status.value}, not finished")
        remote = remote_exception(failure)
        if remote is not None:
            raise remote
        raise RemoteError(failure.type_name, failure.message, failure.traceback)

    # --- transitions (the scheduler's alone) -------------------------------
    def set_running(self, pid: int | None) -> None:
        self.status = TaskStatus.RUNNING
        self.started = time.time()
        self.worker_pid = pid
        self.version += 1

    def set_progress(self, fraction: float | None, message: str | None) -> None:
        if fraction is not None:
            self.progress = fraction
        if message is not None:
            self.progress_message = message
        self.version += 1

    def finish_ok(self, value: Any) -> None:
        self._result = value
        self._finish(TaskStatus.COMPLETED, None)

    def finish_error(self, error: BaseException | Failure) -> None:
        """FAILED with ``error``: what the job raised (a Failure) or our own exception."""
        self._failure = error
        self._finish(TaskStatus.FAILED, error_text(error))

    def finish_remote_error(self, failure: Failure) -> None:
        self.finish_error(failure)

    def finish_failed(self, exc: BaseException) -> None:
        self.finish_error(exc)

    def finish_cancelled(self, detail: str) -> None:
        self._finish(TaskStatus.CANCELLED, detail)

    def _finish(self, status: TaskStatus, error: str | None) -> None:
        if self.status.is_terminal:  # pragma: no cover - a bug, never user error
            raise AssertionError(f"task {self.task_id!r} is already {self.status.value}")
        self.status = status
        self.error = error
        self.completed = time.time()
        self.version += 1
        done = self._done
        if done is not None:
            self._done = None  # waiters hold their own reference
            done.set()

    def requeue(self) -> None:
        """An operator's requeue of this finished task: its next attempt, its automatic retries renewed."""
        self.new_attempt(f"requeued after {self.status.value}" + (f" ({self.error})" if self.error else ""))
        self.retries_left = self.options.retries if self.options is not None else 0

    def new_attempt(self, why: str) -> None:
        """Make the task PENDING again as its next attempt; ``why`` is how the last one ended.

        Used for a retry (from RUNNING or PENDING) and for an operator's
        requeue of a finished task; the pickled call is sent again.
        """
        self.previous_errors = (*self.previous_errors, why)
        self.attempt += 1
        self.status = TaskStatus.PENDING
        self.started = None
        self.completed = None
        self.error = None
        self.progress = None
        self.progress_message = None
        self.worker_pid = None
        self._result = None
        self._failure = None
        self.noted = False
        self.requeues = 0
        self.version += 1


def remote_exception(failure: Failure) -> BaseException | None:
    """The exception a job raised, unpickled here; None if it was not pickled or cannot be unpickled.

    Unpickling runs user code: whatever that raises, the caller falls back on the error's name
    and text (a RemoteError).
    """
    if failure.exc_bytes is None:
        return None
    try:
        remote = pickle.loads(failure.exc_bytes)
    except BaseException:
        return None
    return remote if isinstance(remote, BaseException) else None


def error_text(error: BaseException | Failure) -> str:
    """``"Type: message"`` of an attempt's error, as ``TaskInfo.error`` shows it."""
    if isinstance(error, Failure):
        return f"{error.type_name}: {error.message}"
    return f"{type(error).__name__}: {error}"


def _fresh(template: BaseException) -> BaseException:
    """A new exception like ``template``, so every waiter gets its own instance.

    Raising one instance into several waiters would share (and keep
    rewriting) its ``__traceback__`` and ``__context__``. The copy has the
    same class, ``args`` and attributes (its ``__init__`` is not run again)
    and keeps the recorded ``__cause__``; it starts with no traceback.
    """
    cls = type(template)
    fresh = cls.__new__(cls, *template.args)
    fresh.args = template.args
    fresh.__dict__.update(template.__dict__)
    fresh.__cause__ = template.__cause__
    fresh.__suppress_context__ = template.__suppress_context__
    return fresh
