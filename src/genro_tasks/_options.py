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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, overload

from ._validate import check_memory_limit, check_priority, check_seconds

if TYPE_CHECKING:
    from ._manager import TaskManager

T = TypeVar("T")


class _Keep(enum.Enum):
    KEEP = "keep"


#: Default of :meth:`TaskSubmitter.options` arguments: keep the current value.
_KEEP = _Keep.KEEP


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

    Raises:
        ValueError: An option is out of range or of the wrong type (``True``
            is not a number); the message names the option.
    """

    timeout: float | None = None
    priority: int = 0
    memory_limit: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "timeout", check_seconds("timeout", self.timeout))
        check_priority(self.priority)
        check_memory_limit(self.memory_limit)


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
        changes: dict[str, Any] = {}
        if timeout is not _KEEP:
            changes["timeout"] = timeout
        if priority is not _KEEP:
            changes["priority"] = priority
        if memory_limit is not _KEEP:
            changes["memory_limit"] = memory_limit
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
