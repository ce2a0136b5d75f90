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
from typing import TYPE_CHECKING, Any, TypeVar, overload

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


#: The options of a plain ``tm.submit(...)``.
DEFAULT_OPTIONS = TaskOptions()


class TaskSubmitter:
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

    def options(
        self,
        *,
        timeout: float | _Keep | None = _KEEP,
        priority: int | _Keep = _KEEP,
        memory_limit: int | _Keep | None = _KEEP,
    ) -> TaskSubmitter:
        """A new view with some options changed (the ones not given are kept).

        Raises:
            ValueError: A new option is out of range (see :class:`TaskOptions`).
        """
        changes: dict[str, Any] = {}
        if timeout is not _KEEP:
            changes["timeout"] = timeout
        if priority is not _KEEP:
            changes["priority"] = priority
        if memory_limit is not _KEEP:
            changes["memory_limit"] = memory_limit
        return TaskSubmitter(self._manager, dataclasses.replace(self._options, **changes))

    def submit(
        self,
        func: Callable[..., Any],
        /,
        *args: Any,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """:meth:`TaskManager.submit` with this view's options."""
        return self._manager._submit(func, args, kwargs, task_id, metadata, self._options)

    async def submit_wait(
        self,
        func: Callable[..., Any],
        /,
        *args: Any,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """:meth:`TaskManager.submit_wait` with this view's options.

        **Cancellation:** If cancelled while waiting for room, nothing was submitted.
        """
        return await self._manager._submit_wait(func, args, kwargs, task_id, metadata, self._options)

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
        """:meth:`TaskManager.run` with this view's options.

        **Cancellation:** As :meth:`TaskManager.run`: the task is hard-cancelled
        (worker killed and reaped, task CANCELLED) before the cancellation goes through.
        """
        return await self._manager._run(func, args, kwargs, task_id, metadata, self._options)
