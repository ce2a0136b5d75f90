"""Checks shared by every public entry point: one wording, one place.

Each helper raises at the call with a message that names the option (and,
where one exists, the task) and says what is accepted. ``bool`` is never
taken as a number, although Python counts it as an ``int``.
"""

from __future__ import annotations

import math
from typing import Any

from genro_tasks_worker._protocol import MAX_MAX_MESSAGE_SIZE, MIN_MAX_MESSAGE_SIZE

from ._task import TaskStatus

#: ``setrlimit`` takes limits below 2**63; a memory_limit is added to what the
#: worker already uses, so leave it that much headroom.
MAX_MEMORY_LIMIT = 2**62


def _where(task_id: str | None) -> str:
    return f" for task {task_id!r}" if task_id is not None else ""


def is_number(value: object) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_count(name: str, value: object, *, allow_none: bool = True) -> None:
    """A positive int (or None when ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, not {value!r}")


def check_seconds(
    name: str, value: object, *, task_id: str | None = None, allow_zero: bool = False, allow_none: bool = True
) -> float | None:
    """A finite number of seconds, positive (or non-negative with ``allow_zero``); returned as a float."""
    if value is None and allow_none:
        return None
    if is_number(value):
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except OverflowError:  # an int too large for a float
            seconds = math.inf
        if (seconds >= 0 if allow_zero else seconds > 0) and seconds < math.inf:
            return seconds
    kind = "non-negative" if allow_zero else "positive"
    raise ValueError(
        f"{name}{_where(task_id)} must be a {kind} finite number of seconds{' or None' if allow_none else ''}, "
        f"not {value!r}"
    )


def check_priority(value: object, *, task_id: str | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"priority{_where(task_id)} must be an int (higher runs first), not {value!r}")
    return value


def check_memory_limit(value: object, *, task_id: str | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_MEMORY_LIMIT:
        raise ValueError(
            f"memory_limit{_where(task_id)} must be a positive int of bytes, at most 2**62 "
            f"(setrlimit's ceiling, less what the worker already uses), or None; not {value!r}"
        )
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value


def parse_status(value: object) -> TaskStatus:
    """A TaskStatus, or its value or name in any case (``"RUNNING"``, ``"running"``)."""
    if isinstance(value, TaskStatus):
        return value
    if isinstance(value, str):
        try:
            return TaskStatus(value.lower())
        except ValueError:
            pass
    valid = ", ".join(repr(s.value) for s in TaskStatus)
    raise ValueError(f"status must be a TaskStatus or one of {valid} (any case), not {value!r}")


def check_metadata(value: Any, *, task_id: str | None = None) -> dict[str, Any] | None:
    """Copy of a mapping of metadata, or None."""
    if value is None:
        return None
    try:
        copy = dict(value)
    except (TypeError, ValueError):
        raise TypeError(f"metadata{_where(task_id)} must be a dict or None, not {value!r}") from None
    return copy or None


def check_message_size(max_message_size: object) -> None:
    """Raise ValueError unless ``max_message_size`` is an int of bytes in the accepted range."""
    if (
        isinstance(max_message_size, bool)
        or not isinstance(max_message_size, int)
        or not MIN_MAX_MESSAGE_SIZE <= max_message_size <= MAX_MAX_MESSAGE_SIZE
    ):
        raise ValueError(
            f"max_message_size must be an int of bytes between {MIN_MAX_MESSAGE_SIZE:,} (1 MiB) and "
            f"{MAX_MAX_MESSAGE_SIZE:,} (1 TiB), not {max_message_size!r}"
        )


def check_group(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"group must be a non-empty str naming the group, or None; not {value!r}")
    return value


def check_retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"retries must be an int >= 0 (how many more attempts a failed task gets), not {value!r}")
    return value


def check_retry_on(value: object) -> tuple[type[BaseException] | str, ...]:
    """A tuple of exception types or type names (a single one is accepted too)."""
    items = (value,) if isinstance(value, type | str) else value
    if isinstance(items, tuple | list):
        out = tuple(items)
        if all((isinstance(x, type) and issubclass(x, BaseException)) or (isinstance(x, str) and x) for x in out):
            return out
    raise ValueError(
        "retry_on must be a tuple of exception types or of their names (e.g. (OSError, 'mymodule.Busy')), "
        f"not {value!r}"
    )
