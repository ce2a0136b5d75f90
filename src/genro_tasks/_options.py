"""Per-task options, kept out of the job's own keyword arguments.

``submit(func, *args, **kwargs)`` hands every keyword except ``task_id`` and
``metadata`` to the job. This project's own per-task settings travel in a
:class:`TaskOptions` value instead, through the view that
``TaskManager.options(...)`` returns::

    tm.options(timeout=30, priority=5).submit(fetch, url, timeout=5)
    # the task may run 30 s; fetch() gets timeout=5
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import sys
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, overload

from ._many import TaskMap
from ._validate import (
    check_bool,
    check_group,
    check_memory_limit,
    check_priority,
    check_retries,
    check_retry_on,
    check_seconds,
)

if TYPE_CHECKING:
    from ._manager import TaskManager

T = TypeVar("T")


class _Keep(enum.Enum):
    KEEP = "keep"


#: Default of :meth:`TaskSubmitter.options` arguments: keep the current value.
_KEEP = _Keep.KEEP


#: ``map``'s window on a client-only manager (whose jobs run in other processes) counts as this many workers'.
_CLIENT_IN_FLIGHT = 8


@dataclasses.dataclass(frozen=True, slots=True)
class TaskOptions:
    """How the TaskManager runs a task (never passed to the job). Validated when built.

    Attributes:
        timeout: Seconds the task may run, counted from RUNNING, before its
            worker is killed and the task FAILED with TaskTimeout; None: no limit.
        priority: Higher runs first; equal priorities run in submission order.
        memory_limit: Bytes of memory the job may allocate on top of what its
            worker already uses (at most 2**62); beyond it the job gets
            MemoryError and the task fails with MemoryLimitExceeded. None: no limit.
        group: A name tagging the task as one of a group (see
            ``TaskManager.group_info`` and ``cancel_group``); None: no group.
        retries: How many more attempts a task gets when an attempt fails
            with a retryable error (0, the default: never run again).
        retry_backoff: Seconds to wait before the first retry; each further
            retry waits twice as long as the one before, at most
            ``retry_backoff_max``. 0 retries at once.
        retry_backoff_max: The longest wait between two attempts, in seconds;
            at least ``retry_backoff`` (a larger ``retry_backoff`` is refused,
            not cut to it).
        retry_on: Which errors of an attempt are retried: exception types
            (matched with ``isinstance`` against the error as ``result()``
            would raise it: the job's own exception rebuilt with tblib, or
            TaskTimeout, MemoryLimitExceeded) or names of types (``"module.Type"``
            or ``"Type"``, matched against the job's exception type and its
            bases, for types this process cannot import). Default: any Exception.
        retry_on_crash: Also retry an attempt whose worker process died
            (WorkerCrashed); off by default, because a job that crashes its
            worker may well do it again.

    Raises:
        ValueError: An option is out of range or of the wrong type (``True``
            is not a number); the message names the option.
    """

    timeout: float | None = None
    priority: int = 0
    memory_limit: int | None = None
    group: str | None = None
    retries: int = 0
    retry_backoff: float = 1.0
    retry_backoff_max: float = 60.0
    retry_on: tuple[type[BaseException] | str, ...] = (Exception,)
    retry_on_crash: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "timeout", check_seconds("timeout", self.timeout))
        check_priority(self.priority)
        check_memory_limit(self.memory_limit)
        check_group(self.group)
        check_retries(self.retries)
        object.__setattr__(
            self, "retry_backoff", check_seconds("retry_backoff", self.retry_backoff, allow_zero=True, allow_none=False)
        )
        object.__setattr__(
            self,
            "retry_backoff_max",
            check_seconds("retry_backoff_max", self.retry_backoff_max, allow_zero=True, allow_none=False),
        )
        if self.retry_backoff > self.retry_backoff_max:
            raise ValueError(
                f"retry_backoff={self.retry_backoff:g}{_default_note('retry_backoff', self.retry_backoff)} is above "
                f"retry_backoff_max={self.retry_backoff_max:g}"
                f"{_default_note('retry_backoff_max', self.retry_backoff_max)}: every wait would be cut to "
                f"{self.retry_backoff_max:g}s; pass retry_backoff_max={self.retry_backoff:g} (or more) too, "
                "or a smaller retry_backoff"
            )
        object.__setattr__(self, "retry_on", check_retry_on(self.retry_on))
        check_bool("retry_on_crash", self.retry_on_crash)

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` once attempt ``attempt`` (1-based) failed."""
        return min(self.retry_backoff * 2.0 ** min(attempt - 1, 64), self.retry_backoff_max)


def _default_note(name: str, value: float) -> str:
    """`` (the default)`` when ``value`` is the default of the TaskOptions field ``name``."""
    return " (the default)" if value == TaskOptions.__dataclass_fields__[name].default else ""


#: What a ``submit``/``submit_wait``/``run`` call asked for, before any check:
#: ``(func, args, kwargs, task_id, metadata)`` (a plain tuple: it is built for every task).
Call: TypeAlias = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], str | None, dict[str, Any] | None]


#: The options of a plain ``tm.submit(...)``.
DEFAULT_OPTIONS = TaskOptions()


class SubmitMethods:
    """``options``, ``submit``, ``submit_wait`` and ``run``, written once for the manager and its views.

    A subclass says where tasks go and with which options (:meth:`_submit_to`).
    """

    __slots__ = ()

    def _submit_to(self) -> tuple[TaskManager, TaskOptions]:
        raise NotImplementedError

    def options(
        self,
        base: TaskOptions | None = None,
        /,
        *,
        timeout: float | _Keep | None = _KEEP,
        priority: int | _Keep = _KEEP,
        memory_limit: int | _Keep | None = _KEEP,
        group: str | _Keep | None = _KEEP,
        retries: int | _Keep = _KEEP,
        retry_backoff: float | _Keep = _KEEP,
        retry_backoff_max: float | _Keep = _KEEP,
        retry_on: tuple[type[BaseException] | str, ...] | _Keep = _KEEP,
        retry_on_crash: bool | _Keep = _KEEP,
    ) -> TaskSubmitter:
        """Return a view whose ``submit``/``submit_wait``/``run`` apply these task options.

        The options are this project's own settings for a task; they never
        reach the job, so a job may have its own ``timeout`` keyword::

            tm.options(timeout=30).submit(fetch, url, timeout=5)

        On a view, the options not given are kept from the view's own.

        Args:
            base: A :class:`TaskOptions` to start from (default: the view's
                options; on the manager, no timeout, priority 0, no memory limit).
            timeout: Seconds the task may run (counted from RUNNING) before
                its worker is killed and the task FAILED with TaskTimeout.
            priority: Higher runs first; equal priorities run in submission order.
            memory_limit: Bytes the job may allocate on top of what its worker
                already uses (at most 2**62); beyond it the task fails with
                MemoryLimitExceeded.
            group: Tag the tasks as members of this group (see
                :meth:`TaskManager.group_info`).
            retries: Attempts a task gets after a failed one (default 0).
            retry_backoff: Seconds before the first retry; doubled for each
                further one, up to ``retry_backoff_max``.
            retry_backoff_max: The longest wait between attempts.
            retry_on: Exception types (or their names) whose failures are
                retried; default ``(Exception,)``.
            retry_on_crash: Also retry an attempt whose worker died.

        Returns:
            A :class:`TaskSubmitter`; ``.options(...)`` on it refines further.

        Raises:
            ValueError: An option is out of range or not a number (``True`` is
                not one); the message names it.
            TypeError: ``base`` is not a TaskOptions.
        """
        manager, current = self._submit_to()
        if base is None:
            base = current
        elif not isinstance(base, TaskOptions):
            raise TypeError(f"options() takes a TaskOptions as its positional argument, not {base!r}")
        given: dict[str, Any] = {
            "timeout": timeout,
            "priority": priority,
            "memory_limit": memory_limit,
            "group": group,
            "retries": retries,
            "retry_backoff": retry_backoff,
            "retry_backoff_max": retry_backoff_max,
            "retry_on": retry_on,
            "retry_on_crash": retry_on_crash,
        }
        changes = {name: value for name, value in given.items() if value is not _KEEP}
        return TaskSubmitter(manager, dataclasses.replace(base, **changes) if changes else base)

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
        job. Per-task options (timeout, priority, memory limit) come from the
        view it is called on: ``tm.options(timeout=30).submit(func, ...)``
        (``tm.submit`` uses the defaults).

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
        manager, options = self._submit_to()
        return manager._submit((func, args, kwargs, task_id, metadata), options)

    async def submit_wait(
        self,
        func: Callable[..., Any],
        /,
        *args: Any,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """Like :meth:`~TaskManager.submit`, but wait for room when ``max_queued`` tasks are queued.

        Raises what :meth:`~TaskManager.submit` raises, except QueueFull; a bad argument
        raises at once, before any waiting.

        **Cancellation:** If cancelled while waiting for room, nothing was
        submitted.
        """
        manager, options = self._submit_to()
        return await manager._submit_wait((func, args, kwargs, task_id, metadata), options)

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

        Takes the same arguments as :meth:`~TaskManager.submit` (every keyword
        but ``task_id`` and ``metadata`` goes to the job; per-task options
        come from the view, see :meth:`TaskManager.options`) and returns or
        raises as :meth:`TaskManager.result` does.

        **Cancellation:** If the calling scope is cancelled, the task is
        hard-cancelled: its worker is killed and reaped, and the task is
        recorded CANCELLED, before ``run`` lets the cancellation through.
        """
        manager, options = self._submit_to()
        return await manager._run((func, args, kwargs, task_id, metadata), options)

    def map(
        self,
        func: Callable[..., Any],
        items: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
        return_exceptions: bool = False,
        chunksize: int | None = None,
        timeout: float | _Keep | None = _KEEP,
        priority: int | _Keep = _KEEP,
        memory_limit: int | _Keep | None = _KEEP,
        group: str | _Keep | None = _KEEP,
        retries: int | _Keep = _KEEP,
        retry_backoff: float | _Keep = _KEEP,
        retry_backoff_max: float | _Keep = _KEEP,
        retry_on: tuple[type[BaseException] | str, ...] | _Keep = _KEEP,
        retry_on_crash: bool | _Keep = _KEEP,
    ) -> TaskMap:
        """Run ``func(item)`` for every item in worker processes; iterate the results.

        ::

            async with tm.map(render, pages, max_in_flight=16) as results:
                async for page in results:
                    ...

        Items are taken from ``items`` (an iterable or an async iterable)
        lazily: at most ``max_in_flight`` are submitted and not yet yielded,
        so the parent's memory does not grow with the input's length. Every
        task of the batch belongs to one group (``.group`` of the result; a
        fresh ``"map-<uuid>"`` unless ``group`` names one), so
        ``tm.group_info(it.group)`` shows its aggregate progress.

        Leaving early (``break``, an exception, a cancelled scope, ``aclose()``)
        hard-cancels the batch's queued and running tasks; see
        :class:`~genro_tasks.TaskMap` for exactly when.

        Args:
            func: A picklable callable of one argument (as for ``submit``).
            items: The arguments, one per task.
            ordered: Yield results in input order (True) or as tasks complete.
            max_in_flight: Most tasks submitted and not yet yielded; each
                task holds one item, or one chunk of items (see ``chunksize``).
                Default: 64 times ``max_workers`` with ``chunksize=1`` (small
                tasks need a deep window to keep the workers busy), else 4
                times ``max_workers`` (chunks); on a client-only manager
                (``max_workers=0`` on a store) as with 8 workers. At most 512
                are submitted before each wait for a result, so a larger
                window fills over the first results.
            return_exceptions: Yield what a failed item raised as a value
                instead of raising it (which cancels the rest of the batch).
            chunksize: Items per task. ``1``: one task per item (each item
                is a task of its own: its own record, status, progress,
                timeout and retries). ``N > 1``: a task runs ``func`` on up to
                ``N`` items in turn; results still come one per item, an
                item's exception is still raised (or returned) at its
                position with its remote traceback, but the task's status,
                ``timeout`` and a crash or cancel are the chunk's (each of its
                items raises that). ``None`` (default): automatic; one item
                per task to begin with, then chunks sized from the measured
                time per item so that a chunk takes about 5 ms (at most 1,000
                items or 1 MiB of arguments): slow items stay one per task.
                Automatic means ``1`` with ``timeout``, ``retries`` or an
                ``async def`` function, whose promises are per item.
            timeout: Per-task option, as for :meth:`options`.
            priority: Per-task option, as for :meth:`options`.
            memory_limit: Per-task option, as for :meth:`options`.
            group: The batch's group name (default: a fresh one).
            retries: Per-task option, as for :meth:`options`.
            retry_backoff: Per-task option, as for :meth:`options`.
            retry_backoff_max: Per-task option, as for :meth:`options`.
            retry_on: Per-task option, as for :meth:`options`.
            retry_on_crash: Per-task option, as for :meth:`options`.

        Returns:
            A :class:`~genro_tasks.TaskMap` (an async iterator and async context manager).

        Raises:
            ValueError: An option is out of range (the message names it), or
                ``chunksize > 1`` with ``retries`` or an ``async def`` function.
            TypeError: ``func`` is not callable or ``items`` not iterable.
        """
        view = self.options(
            timeout=timeout,
            priority=priority,
            memory_limit=memory_limit,
            group=group,
            retries=retries,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            retry_on=retry_on,
            retry_on_crash=retry_on_crash,
        )
        manager, options = view._submit_to()
        if not callable(func):
            raise TypeError(f"map() needs a callable as its first argument, not {func!r}")
        if not isinstance(items, Iterable | AsyncIterable):
            raise TypeError(f"map() needs an iterable (or async iterable) of items, not {items!r}")
        check_bool("map(ordered=...)", ordered)
        check_bool("map(return_exceptions=...)", return_exceptions)
        if max_in_flight is not None and (
            isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1
        ):
            raise ValueError(f"map(max_in_flight=...) must be a positive int or None, not {max_in_flight!r}")
        is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)
        if chunksize is None:
            if options.retries or options.timeout is not None or is_async:
                chunksize = 1  # their promises are per task: keep one item per task
        elif isinstance(chunksize, bool) or not isinstance(chunksize, int) or not 1 <= chunksize <= sys.maxsize:
            raise ValueError(
                "map(chunksize=...) must be a positive int or None (automatic), an int at most sys.maxsize; "
                f"not {chunksize!r}"
            )
        elif chunksize > 1 and options.retries:
            raise ValueError(
                f"map(chunksize={chunksize}) with retries={options.retries}: retries re-run a whole task, and a "
                "chunk's items fail one by one; pass chunksize=1 to retry items"
            )
        elif chunksize > 1 and is_async:
            raise ValueError(
                f"map(chunksize={chunksize}) runs plain functions only, and {func!r} is an async def "
                "function; pass chunksize=1 (or leave it to None)"
            )
        if max_in_flight is None:
            # One item per task: a deep window keeps the workers fed while finished items wait their turn.
            # A client-only manager (max_workers=0 on a store) feeds other processes' workers.
            max_in_flight = (64 if chunksize == 1 else 4) * (manager.max_workers or _CLIENT_IN_FLIGHT)
        if options.group is None:
            options = dataclasses.replace(options, group=f"map-{uuid.uuid4().hex[:12]}")
        return TaskMap(
            manager,
            options,
            func,
            items,
            ordered=ordered,
            max_in_flight=max_in_flight,
            return_exceptions=return_exceptions,
            chunksize=chunksize,
        )


class TaskSubmitter(SubmitMethods):
    """``tm.submit``/``submit_wait``/``run`` with a fixed :class:`TaskOptions`.

    Returned by :meth:`TaskManager.options`; cheap to build and to keep.
    Every keyword argument of its ``submit``/``submit_wait``/``run`` except
    ``task_id`` and ``metadata`` goes to the job.
    """

    __slots__ = ("_manager", "_options")

    def __init__(self, manager: TaskManager, options: TaskOptions) -> None:
        self._manager = manager
        self._options = options

    @property
    def task_options(self) -> TaskOptions:
        """The options every task submitted through this view gets."""
        return self._options

    def __repr__(self) -> str:
        return f"<TaskSubmitter {self._options!r}>"

    def _submit_to(self) -> tuple[TaskManager, TaskOptions]:
        return self._manager, self._options
