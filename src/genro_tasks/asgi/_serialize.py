"""The JSON form of a task."""

from __future__ import annotations

import json
from typing import Any

from .._task import TaskInfo


def info_to_json(info: TaskInfo, *, tracebacks: bool = False) -> dict[str, Any]:
    """The JSON form of a TaskInfo.

    Errors are reduced to their first line, and the remote traceback left
    out, unless ``tracebacks`` is True.
    """
    error = info.error
    if error is not None and not tracebacks:
        error = error.split("\n", 1)[0]
    data = {
        "task_id": info.task_id,
        "name": info.name,
        "status": info.status.value,
        "created_at": info.created_at.isoformat(),
        "started_at": info.started_at.isoformat() if info.started_at else None,
        "completed_at": info.completed_at.isoformat() if info.completed_at else None,
        "error": error,
        "progress": info.progress,
        "progress_message": info.progress_message,
        "metadata": _jsonable(info.metadata),
        "worker_pid": info.worker_pid,
        "timeout": info.timeout,
        "priority": info.priority,
    }
    if tracebacks:
        data["traceback"] = info.traceback
    return data


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return {str(k): repr(v) for k, v in value.items()} if isinstance(value, dict) else repr(value)
