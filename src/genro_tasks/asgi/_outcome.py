"""How a task ended, by kind (shared by metrics and tracing)."""

from __future__ import annotations

from .._task import TaskInfo, TaskStatus

#: Every outcome kind.
OUTCOMES = ("completed", "failed", "cancelled", "timeout", "crash", "memory_limit")
_KIND_BY_ERROR = {"TaskTimeout": "timeout", "WorkerCrashed": "crash", "MemoryLimitExceeded": "memory_limit"}


def outcome(info: TaskInfo) -> str:
    """The outcome kind of a terminal task: one of :data:`OUTCOMES`."""
    if info.status is not TaskStatus.FAILED:
        return info.status.value
    error_type = (info.error or "").split(":", 1)[0].rsplit(".", 1)[-1]
    return _KIND_BY_ERROR.get(error_type, "failed")
