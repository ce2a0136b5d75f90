"""The TaskManager facade: the public API over the supervisor.

It keeps the registry of task records, validates input, and asks the
supervisor to act. It never changes a task's state itself.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import pickle
import types
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, NamedTuple, TypeVar, overload

import trio
from trio.lowlevel import enable_ki_protection

from genro_tasks_worker._protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_MAX_MESSAGE_SIZE,
    MIN_MAX_MESSAGE_SIZE,
    PICKLE_PROTOCOL,
)

from ._errors import ManagerClosed, MessageTooLarge, QueueFull, UnpicklableJob
from ._options import _KEEP, DEFAULT_OPTIONS, TaskOptions, TaskSubmitter, _Keep
from ._supervisor import Supervisor, default_context
from ._task import TaskInfo, TaskManagerStatistics, TaskRecord, TaskStatus
from ._validate import check_bool, check_count, check_metadata, check_seconds, parse_status
from ._watch import ChangeStream, TaskWatcher
from ._worker_proc import main_module_ref

T = TypeVar("T")

log = logging.getLogger("genro_tasks")

#: How long ``run()`` waits, shielded, for the kill of a task whose caller was cancelled.
_CANCEL_LIMIT = 10.0


class _Job(NamedTuple):
    """A checked, pickled submission, not yet recorded."""

    task_id: str
    name: str
    payload: bytes
    metadata: dict[str, Any] | None
    options: TaskOptions


class _MainFinder(pickle.Pickler):
    """Pickles into the void, noting the first function or class defined in ``__main__``."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), PICKLE_PROTOCOL)
        self.found: str | None = None

    def reducer_override(self, obj: Any) -> Any:
        if self.found is None and isinstance(obj, type | types.FunctionType) and obj.__module__ == "__main__":
            self.found = obj.__qualname__
        return NotImplemented


def _refuse_unimportable_main(what: str, obj: object) -> None:
    """Raise UnpicklableJob if ``obj`` needs ``__main__`` and worker processes cannot import it.

    A worker finds a function defined in the main script by importing that
    script again. A program run as ``python -c``, from stdin, or typed into an
    interactive session has no file to import, so the worker would fail later
    with a cryptic ``AttributeError``/``FileNotFoundError``: say so now.
    """
    ref = main_module_ref()
    if ref is not None and (ref[0] == "name" or os.path.isfile(ref[1])):
        return
    finder = _MainFinder()
    finder.dump(obj)
    if finder.found is None:
        return
    raise UnpicklableJob(
        f"{what} refers to __main__.{finder.found}, but worker processes cannot import this program's main "
        "module: it runs from 'python -c', from stdin or in an interactive session, and has no file they could "
        "import. Define the function (or class) in a module file and import it from there."
    )


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
        max_message_size: Largest message, in bytes, between this process
            and a worker (default 1 GiB; at least 1 MiB): a pickled job
            (``submit`` raises MessageTooLarge beyond it), a pickled result,
            an error report, a progress message. A task whose result is
            larger fails with MessageTooLarge. It bounds what one worker
            can make this process buffer, however its frames claim more.
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
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        check_count("max_workers", max_workers, allow_none=False)
        check_count("max_tasks_per_worker", max_tasks_per_worker)
        check_count("max_queued", max_queued)
        check_count("max_finished", max_finished, allow_none=False)
        finished_ttl = check_seconds("finished_ttl", finished_ttl)
        if not isinstance(start_method, str):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', not {start_method!r}")
        try:
            initargs = tuple(initargs)
        except TypeError:
            raise TypeError(f"initargs must be a tuple of arguments for the initializer, not {initargs!r}") from None
        if (
            isinstance(max_message_size, bool)
            or not isinstance(max_message_size, int)
            or not MIN_MAX_MESSAGE_SIZE <= max_message_size <= MAX_MAX_MESSAGE_SIZE
        ):
            raise ValueError(
                f"max_message_size must be an int of bytes between {MIN_MAX_MESSAGE_SIZE:,} (1 MiB) and "
                f"{MAX_MAX_MESSAGE_SIZE:,} (1 TiB), not {max_message_size!r}"
            )
        if initializer is not None:
            if not callable(initializer):
                raise TypeError(f"initializer must be callable, not {initializer!r}")
            try:
                payload = pickle.dumps((initializer, initargs), PICKLE_PROTOCOL)
            except Exception as exc:
                raise UnpicklableJob(
                    f"initializer {_func_name(initializer)} or its initargs cannot be sent to worker processes: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if b"__main__" in payload:
                _refuse_unimportable_main(f"initializer {_func_name(initializer)}", (initializer, initargs))
        self._max_workers = max_workers
        self._ctx = default_context(start_method)
        self._start_method = start_method
        self._initializer = initializer
        self._initargs = initargs
        self._max_tasks = max_tasks_per_worker
        self._max_queued = max_queued
        self._rejected = 0
        self._max_finished = max_finished
        self._finished_ttl = finished_ttl
        self._max_message_size = max_message_size
        self._records: dict[str, TaskRecord] = {}
        self._finished: deque[TaskRecord] = deque()
        self._sup: Supervisor | None = None
        self._running = False
        self._shut_down = False
        self._seq = 0
        self._changed: trio.Event | None = None
        self._streams: weakref.WeakSet[ChangeStream] = weakref.WeakSet()
        #: The trio run this manager was started in, and its clock (set by startup()).
        self._token: trio.lowlevel.TrioToken | None = None
        self._clock: trio.abc.Clock | None = None

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
        self._token = trio.lowlevel.current_trio_token()
        self._clock = trio.lowlevel.current_clock()
        sup = Supervisor(
            self._max_workers,
            self._ctx,
            self._note_change,
            initializer=self._initializer,
            initargs=self._initargs,
            max_tasks_per_worker=self._max_tasks,
            max_message_size=self._max_message_size,
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
        check_bool("shutdown(wait=...)", wait)
        check_bool("shutdown(cancel_pending=...)", cancel_pending)
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
    def options(
        self,
        base: TaskOptions | None = None,
        /,
        *,
        timeout: float | _Keep | None = _KEEP,
        priority: int | _Keep = _KEEP,
        memory_limit: int | _Keep | None = _KEEP,
    ) -> TaskSubmitter:
        """Return a view whose ``submit``/``submit_wait``/``run`` apply these task options.

        The options are this project's own settings for a task; they never
        reach the job, so a job may have its own ``timeout`` keyword::

            tm.options(timeout=30).submit(fetch, url, timeout=5)

        Args:
            base: A :class:`TaskOptions` to start from (default: no timeout,
                priority 0, no memory limit).
            timeout: Seconds the task may run (counted from RUNNING) before
                its worker is killed and the task FAILED with TaskTimeout.
            priority: Higher runs first; equal priorities run in submission order.
            memory_limit: Bytes the job may allocate on top of what its worker
                already uses (at most 2**62); beyond it the task fails with
                MemoryLimitExceeded.

        Returns:
            A :class:`TaskSubmitter`; ``.options(...)`` on it refines further.

        Raises:
            ValueError: An option is out of range or not a number (``True`` is
                not one); the message names it.
            TypeError: ``base`` is not a TaskOptions.
        """
        if base is None:
            base = DEFAULT_OPTIONS
        elif not isinstance(base, TaskOptions):
            raise TypeError(f"options() takes a TaskOptions as its positional argument, not {base!r}")
        return TaskSubmitter(self, base).options(timeout=timeout, priority=priority, memory_limit=memory_limit)

    def submit(
        self,
        func: Callable[..., Any],
        /,
        *args: Any,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """Queue ``func(*args, **kwargs)`` to run in a worker process; never blocks.

        The function and its arguments are pickled right here, so later
        changes to the arguments do not reach the job, and anything that
        cannot cross into another process is refused before a record exists.
        Every argument is checked before the queue's room, so a bad call
        raises its own error even when the queue is full.

        ``task_id`` and ``metadata`` are the only keywords taken for the
        manager (the seed API defines them); every other keyword goes to the
        job. Per-task options (timeout, priority, memory limit) are set with
        :meth:`options`: ``tm.options(timeout=30).submit(func, ...)``.

        Call it from the trio thread that runs the manager; from another
        thread use ``trio.from_thread.run_sync(functools.partial(tm.submit,
        func, *args, **kwargs))``.

        Args:
            func: A picklable callable: a module-level function, or an
                instance of a module-level class with ``__call__``, importable
                by the worker processes (so not defined in a ``python -c``
                script, a script read from stdin or an interactive session).
            *args: Positional arguments for ``func``.
            task_id: Your own id for the task (a non-empty str), or None to
                get a fresh UUID.
            metadata: A dict you want to find again in ``info()``.
            **kwargs: Keyword arguments for ``func``.

        Returns:
            The task id.

        Raises:
            ManagerClosed: The manager is not running (a RuntimeError).
            QueueFull: ``max_queued`` tasks are already waiting (a RuntimeError).
            ValueError: ``task_id`` is empty or already used.
            TypeError: ``func`` is not callable, or ``metadata`` not a dict.
            UnpicklableJob: ``func`` or an argument cannot be pickled, or
                refers to a main module the workers cannot import (a TypeError).
            MessageTooLarge: ``func`` and its arguments pickle to more than
                ``max_message_size`` bytes (a ValueError).
            RuntimeError: Called from a thread other than the manager's trio thread.
        """
        return self._submit(func, args, kwargs, task_id, metadata, DEFAULT_OPTIONS)

    async def submit_wait(
        self,
        func: Callable[..., Any],
        /,
        *args: Any,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """Like :meth:`submit`, but wait for room when ``max_queued`` tasks are queued.

        Raises what :meth:`submit` raises, except QueueFull; a bad argument
        raises at once, before any waiting.

        **Cancellation:** If cancelled while waiting for room, nothing was
        submitted.
        """
        return await self._submit_wait(func, args, kwargs, task_id, metadata, DEFAULT_OPTIONS)

    def _submit(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_id: str | None,
        metadata: dict[str, Any] | None,
        options: TaskOptions,
    ) -> str:
        """The one way in: every submit, submit_wait and run of the manager and its views."""
        self._check_thread("submit")
        return self._enqueue(self._prepare(func, args, kwargs, task_id, metadata, options), wait_for_room=False)

    async def _submit_wait(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_id: str | None,
        metadata: dict[str, Any] | None,
        options: TaskOptions,
    ) -> str:
        self._check_thread("submit_wait")
        job = self._prepare(func, args, kwargs, task_id, metadata, options)
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
                return self._enqueue(job, wait_for_room=True)
            await self._wait_change()

    def _prepare(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_id: str | None,
        metadata: dict[str, Any] | None,
        options: TaskOptions,
    ) -> _Job:
        """Check and pickle a submission; raise for any bad argument, whatever the queue holds."""
        if task_id is None:
            task_id = str(uuid.uuid4())
        elif not isinstance(task_id, str) or not task_id:
            raise ValueError(f"task_id must be a non-empty str, not {task_id!r}")
        else:
            self._check_new_id(task_id)
        if not isinstance(options, TaskOptions):  # pragma: no cover - views always hold one
            raise TypeError(f"options must be a TaskOptions, not {options!r}")
        meta = check_metadata(metadata, task_id=task_id)
        if not callable(func):
            raise TypeError(f"Task {task_id!r}: {func!r} is not callable")
        name = _func_name(func)
        try:
            payload = pickle.dumps((func, args, kwargs, options.memory_limit), PICKLE_PROTOCOL)
        except Exception as exc:
            raise UnpicklableJob(
                f"Task {task_id!r} ({name}) cannot be sent to a worker process: {type(exc).__name__}: {exc}. "
                "The function must be importable by name (a module-level def, not a lambda, closure or "
                "local function) and every argument must be picklable."
            ) from exc
        if len(payload) > self._max_message_size:
            raise MessageTooLarge(
                task_id, f"job ({name} and its arguments, pickled)", len(payload), self._max_message_size
            )
        if b"__main__" in payload:
            _refuse_unimportable_main(f"Task {task_id!r} ({name})", (func, args, kwargs))
        return _Job(task_id, name, payload, meta, options)

    def _check_new_id(self, task_id: str) -> None:
        if task_id in self._records:
            raise ValueError(
                f"Task id {task_id!r} is already in use; pass a different task_id, or omit it to get a fresh one"
            )

    @enable_ki_protection
    def _enqueue(self, job: _Job, *, wait_for_room: bool) -> str:
        """Record a prepared job and hand it to the supervisor (no await: atomic)."""
        sup = self._sup
        if not self._running or sup is None or not sup.accepting or sup.finished.is_set():
            raise self._closed_error()
        if not wait_for_room and self._max_queued is not None and sup.queued >= self._max_queued:
            self._rejected += 1
            raise QueueFull(
                f"{sup.queued} tasks are already queued (max_queued={self._max_queued}); retry later, "
                "or use 'await tm.submit_wait(...)' to wait for room"
            )
        task_id = job.task_id
        self._check_new_id(task_id)  # another submit may have taken it meanwhile
        options = job.options
        self._seq += 1
        rec = TaskRecord(
            self._seq,
            task_id,
            job.name,
            job.payload,
            job.metadata,
            options.timeout,
            options.priority,
            options.memory_limit,
        )
        self._records[task_id] = rec
        sup.enqueue(rec)
        self._note_change(rec)
        return task_id

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
            ValueError: ``timeout`` is not a non-negative finite number of seconds.
            TaskCancelled: The task was cancelled.
            TaskTimeout: The task exceeded its own ``timeout``.
            WorkerCrashed: Its worker process died mid-task.
            UnpicklableResult: It returned a value that cannot be pickled.
            RemoteError: It raised an exception that could not be transported.
            Exception: Whatever the job raised, with the worker's frames in
                its traceback and its chained causes.
            RuntimeError: Called from outside the trio run that owns the manager.

        **Cancellation:** Cancelling the wait leaves the task running; use
        :meth:`run` if the task should die with its caller.
        """
        rec = self._get(task_id)
        self._check_thread("result")
        timeout = check_seconds("result(timeout=...)", timeout, task_id=task_id, allow_zero=True)
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
            ValueError: ``grace`` is not a non-negative finite number of seconds.
            RuntimeError: Called from outside the trio run that owns the manager.

        **Cancellation:** The kill is already under way when this starts
        waiting; cancelling the wait does not stop it, and the task still
        ends CANCELLED.
        """
        rec = self._get(task_id)
        self._check_thread("cancel")
        grace = check_seconds("grace", grace, task_id=task_id, allow_zero=True)
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
        /,
        *args: Any,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> T: ...

    @overload
    async def run(
        self,
        func: Callable[..., T],
        /,
        *args: Any,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> T: ...

    async def run(
        self,
        func: Callable[..., Any],
        /,
        *args: Any,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Submit ``func(*args, **kwargs)`` and wait for its result, in one call.

        Takes the same arguments as :meth:`submit` (every keyword but
        ``task_id`` and ``metadata`` goes to the job; per-task options come
        from :meth:`options`) and returns or raises as :meth:`result` does.

        **Cancellation:** If the calling scope is cancelled, the task is
        hard-cancelled: its worker is killed and reaped, and the task is
        recorded CANCELLED, before ``run`` lets the cancellation through.
        """
        return await self._run(func, args, kwargs, task_id, metadata, DEFAULT_OPTIONS)

    async def _run(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_id: str | None,
        metadata: dict[str, Any] | None,
        options: TaskOptions,
    ) -> Any:
        tid = self._submit(func, args, kwargs, task_id, metadata, options)
        rec = self._records[tid]
        try:
            await rec.wait_done()
        finally:
            if not rec.status.is_terminal and self._sup is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(_CANCEL_LIMIT):
                    self._sup.cancel(rec)
                    await rec.wait_done()
        return rec.outcome()

    @enable_ki_protection
    def list_tasks(self, status: TaskStatus | str | None = None) -> list[TaskInfo]:
        """Return snapshots of all tracked tasks, oldest first, optionally of one status.

        Works from sync code outside trio too (for example after ``trio.run``
        returned); while the manager runs, call it from its trio thread.

        Args:
            status: A :class:`TaskStatus`, or its value in any case
                (``"running"``, ``"RUNNING"``), or None for every task.

        Raises:
            ValueError: ``status`` is not a status; the message lists the valid ones.
            RuntimeError: Called from another thread while the manager runs.
        """
        wanted = None if status is None else parse_status(status)
        self._check_thread("list_tasks")
        self._prune()
        if wanted is None:
            return [rec.snapshot() for rec in self._records.values()]
        return [rec.snapshot() for rec in self._records.values() if rec.status is wanted]

    @enable_ki_protection
    def clear_completed(self) -> int:
        """Forget every finished (COMPLETED, FAILED, CANCELLED) task; return how many.

        Raises:
            RuntimeError: Called from another thread while the manager runs
                (use ``trio.from_thread.run_sync(tm.clear_completed)``).
        """
        self._check_thread("clear_completed")
        done = [tid for tid, rec in self._records.items() if rec.status.is_terminal]
        for tid in done:
            del self._records[tid]
        self._finished.clear()
        return len(done)

    @enable_ki_protection
    def statistics(self) -> TaskManagerStatistics:
        """Return a frozen snapshot of the manager's counters (trio's ``statistics()`` convention).

        Works from sync code outside trio too; while the manager runs, call it
        from its trio thread (RuntimeError otherwise).
        """
        self._check_thread("statistics")
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
            cutoff = self._now() - ttl
            while finished and finished[0].finished_at <= cutoff:
                rec = finished.popleft()
                if records.get(rec.task_id) is rec:
                    del records[rec.task_id]

    def _now(self) -> float:
        """The time on the clock of the trio run that started the manager.

        Readable without a running trio loop (from sync code after
        ``trio.run`` returned), and the same clock the supervisor's deadlines use.
        """
        clock = self._clock
        return clock.current_time() if clock is not None else 0.0

    def _check_thread(self, call: str) -> None:
        """Refuse a call from outside the trio thread while the manager is live.

        The registry and the supervisor belong to one trio run; another
        thread touching them would race with it. Before startup and after the
        supervisor stopped nothing changes any more, so any thread may call.
        """
        token = self._token
        if token is None:
            return
        try:
            if trio.lowlevel.current_trio_token() is token:
                return
        except RuntimeError:
            pass
        sup = self._sup
        if sup is not None and sup.finished.is_set():
            return
        raise RuntimeError(
            f"TaskManager.{call}() was called outside the trio run that owns this manager (from another thread "
            f"or another trio run); call it from that run's thread, e.g. from a worker thread: "
            f"'trio.from_thread.run_sync(functools.partial(tm.{call}, ...))'"
        )

    @enable_ki_protection
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
        self._check_thread("watch")
        watcher = TaskWatcher(rec)
        if not rec.status.is_terminal:
            if rec.watchers is None:
                rec.watchers = weakref.WeakSet()
            rec.watchers.add(watcher)
        return watcher

    @enable_ki_protection
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
        check_count("max_pending", max_pending, allow_none=False)
        self._check_thread("open_change_stream")
        stream = ChangeStream(max_pending)
        if self._sup is not None and self._sup.finished.is_set():
            stream.close()
        else:
            self._streams.add(stream)
        return stream

    @enable_ki_protection
    def _note_change(self, rec: TaskRecord | None) -> None:
        # Called for every transition: keep the common path (nobody watching) short.
        if rec is not None:
            terminal = rec.status.is_terminal
            if terminal and not rec.noted:
                rec.noted = True
                rec.finished_at = self._now()
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
