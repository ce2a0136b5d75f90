"""Every exception genro-tasks raises, and who raises it when.

Failures of a *task* reach you from :meth:`TaskManager.result` (and
:meth:`TaskManager.run`): the job's own exception, or one of
:class:`TaskCancelled`, :class:`TaskTimeout`, :class:`WorkerCrashed`,
:class:`RemoteError`, :class:`UnpicklableResult`, :class:`MessageTooLarge`.
Failures of a *call* are raised by the call itself: :class:`UnpicklableJob`
and :class:`MessageTooLarge` by ``submit``,
:class:`ManagerClosed` by ``submit`` on a manager that is not running.
"""

from __future__ import annotations


class TaskCancelled(Exception):
    """Raised by ``result()``/``run()`` for a task that ended CANCELLED.

    *Your* code (or a shutdown with ``wait=False`` or ``cancel_pending=True``)
    cancelled it: it was removed from the queue, or its worker process was
    killed while it ran. The job never returned.
    """

    def __init__(self, task_id: str, detail: str = "") -> None:
        self.task_id = task_id
        self.detail = detail
        super().__init__(f"Task {task_id!r} was cancelled{': ' + detail if detail else ''}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task_id, self.detail))


class TaskTimeout(TimeoutError):
    """Raised by ``result()``/``run()`` for a task that exceeded its own ``timeout``.

    The task ran longer than its ``tm.options(timeout=...)`` (counted from
    the moment it became RUNNING), so its worker was killed and the task
    recorded FAILED. Not to be confused with ``result(timeout=...)`` running
    out, which raises a plain :class:`TimeoutError` and leaves the task alone.
    """

    def __init__(self, task_id: str, timeout: float) -> None:
        self.task_id = task_id
        self.timeout = timeout
        super().__init__(f"Task {task_id!r} exceeded its timeout of {timeout:g}s and was killed")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task_id, self.timeout))


class WorkerCrashed(Exception):
    """Raised by ``result()``/``run()`` when the worker process died mid-task.

    The job did not raise: its process ended underneath it (``os._exit``, a
    segfault, the OOM killer, a ``kill`` from outside, or a corrupt message
    on its pipe). Only this task fails; the pool replaces the worker.
    ``exitcode`` is the process's exit code, negative for a signal number.
    """

    def __init__(self, task_id: str, pid: int | None, exitcode: int | None, detail: str = "") -> None:
        self.task_id = task_id
        self.pid = pid
        self.exitcode = exitcode
        self.detail = detail
        super().__init__(
            f"Worker process {pid} died while running task {task_id!r}: {describe_exit(exitcode)}"
            + (f" ({detail})" if detail else "")
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task_id, self.pid, self.exitcode, self.detail))


#: What a lost task's error says by default.
LOST_DETAIL = "its TaskManager process died while it ran; the job may or may not have finished"


class TaskLost(Exception):
    """Raised by ``result()`` for a task whose TaskManager process died while it ran.

    Only with a shared store (``TaskManager(store=...)``): the process that
    owned the task was killed (or crashed) after a worker had started the
    job, so nobody knows whether the job finished. Another process using the
    same store (or the next one to start) records the task FAILED with this
    error. Look at what the job was doing before you run it again.
    """

    def __init__(self, task_id: str, detail: str = LOST_DETAIL) -> None:
        self.task_id = task_id
        self.detail = detail
        super().__init__(f"Task {task_id!r} was lost: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task_id, self.detail))


class RemoteError(Exception):
    """Stands in for a job's exception that could not cross the process boundary.

    Raised by ``result()`` when the job raised an exception that cannot be
    pickled in the worker or unpickled in the parent. It carries the original
    exception's type name, message and formatted remote traceback.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        super().__init__(f"{type_name}: {message}\n\nRemote traceback:\n{remote_traceback}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.remote_traceback))


class UnpicklableResult(TypeError):
    """Raised by ``result()`` when the job returned a value that cannot be pickled.

    The job finished, but its return value could not be sent back to the
    parent; the task is recorded FAILED. Return plain data (or write large or
    special objects to a file and return the path).
    """


class UnpicklableJob(TypeError):
    """Raised by ``submit()`` when the function or its arguments cannot be pickled.

    Nothing is recorded for the task. Jobs cross into another process, so the
    function must be importable by name (a module-level ``def``: not a lambda,
    a closure or a local class's method) and its arguments must pickle. Also
    raised when the job refers to a function or class defined in a main
    script the workers cannot import (``python -c``, a script read from
    stdin, an interactive session): define it in a module instead.
    """


class MemoryLimitExceeded(MemoryError):
    """Raised by ``result()`` for a task that ran out of its ``memory_limit``.

    The job tried to allocate beyond its ``tm.options(memory_limit=...)``
    and got a MemoryError in the worker; the task is FAILED and
    the worker (its limit lifted again) serves the next task.
    """

    def __init__(self, task_id: str, limit: int, remote_traceback: str = "") -> None:
        self.task_id = task_id
        self.limit = limit
        self.remote_traceback = remote_traceback
        super().__init__(
            f"Task {task_id!r} exceeded its memory_limit of {limit:,} bytes; raise the limit or make the job "
            "use less memory"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task_id, self.limit, self.remote_traceback))


class MessageTooLarge(ValueError):
    """A task's job, result or report is larger than ``max_message_size``.

    Raised by ``submit()`` when the pickled function and arguments are over
    the ``max_message_size=`` given to TaskManager (nothing is recorded), and
    by ``result()`` for a task whose result, error report or progress
    message was: its worker refused to send it (the task is FAILED, the
    worker serves on), or sent it anyway (the worker is replaced). Pass
    large data through a file and send its path, or raise the limit.
    """

    def __init__(self, task_id: str, what: str, size: int, limit: int) -> None:
        self.task_id = task_id
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(
            f"Task {task_id!r}: its {what} is {size:,} bytes, over max_message_size={limit:,}; pass large data "
            "through a file and send its path, or raise TaskManager(max_message_size=...)"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task_id, self.what, self.size, self.limit))


class WorkerInitError(RuntimeError):
    """Raised when the ``initializer`` given to TaskManager fails in a worker.

    Raised by ``startup()`` if the first workers cannot initialise, and by
    ``result()`` for queued tasks that no worker could run because every
    worker's initializer kept failing (raising, or killing its worker) and no
    other worker was ready or starting. ``type_name`` is empty when the worker
    died while starting instead of raising. Workers are restarted with an
    exponential back-off (up to 5 s), never in a hot loop.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str, task_id: str | None = None) -> None:
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.task_id = task_id
        prefix = f"Task {task_id!r} could not run: " if task_id else ""
        if not type_name:  # the worker died while starting: nothing was raised
            super().__init__(f"{prefix}no worker could start: {message}")
            return
        super().__init__(
            f"{prefix}the worker initializer raised {type_name}: {message}\n\nRemote traceback:\n{remote_traceback}"
        )

    def for_task(self, task_id: str) -> WorkerInitError:
        """The same error, naming the task it prevented."""
        return WorkerInitError(self.type_name, self.message, self.remote_traceback, task_id)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.remote_traceback, self.task_id))


class QueueFull(RuntimeError):
    """Raised by ``submit()`` when ``max_queued`` tasks are already waiting.

    Back off, or use ``await tm.submit_wait(...)``, which waits for room.
    """


class ManagerClosed(RuntimeError):
    """Raised by ``submit()`` (and ``run()``) when the TaskManager is not running.

    Either ``startup()`` was never awaited (use ``async with TaskManager()``
    or call ``await tm.startup()`` first), or ``shutdown()`` has begun.
    """


class SupervisorFailed(RuntimeError):
    """Raised for tasks that were in flight when the manager's scheduler itself failed.

    The scheduler (the trio task supervising every task and worker) hit an
    unexpected internal error; it killed its workers and failed every queued
    and running task with this error. The manager can no longer be used; its
    ``__cause__`` is the internal error.
    """


def describe_exit(exitcode: int | None) -> str:
    """Describe a process exit code the way a person reads it."""
    import signal

    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name} (signal {-exitcode})"
    return f"exited with code {exitcode}"
