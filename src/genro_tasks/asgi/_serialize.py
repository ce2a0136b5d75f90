"""The JSON form of a task, built defensively: one task's odd metadata never
breaks an answer about other tasks (or about itself)."""

from __future__ import annotations

import json
import math
from typing import Any

import trio

from .._task import GroupInfo, TaskInfo

_MAX_DEPTH = 16
_MAX_ITEMS = 200
_MAX_TEXT = 2_000
_MAX_INT_DIGITS = 300
#: Encoded pieces between two checkpoints of :func:`json_bytes` (well under a millisecond of work).
_PIECES_PER_STEP = 2048


def info_to_json(info: TaskInfo, *, tracebacks: bool = False) -> dict[str, Any]:
    """The JSON form of a TaskInfo (always serialisable by ``json.dumps``).

    Errors are reduced to their first line, and the remote traceback left
    out, unless ``tracebacks`` is True. Metadata is converted value by value:
    anything JSON cannot carry (objects, huge ints, NaN, deep nesting, long
    texts) becomes a short descriptive string, and a ``__repr__`` that
    raises is never called twice nor allowed to fail the answer.
    """
    error = info.error
    if error is not None and not tracebacks:
        error = error.split("\n", 1)[0]
    data: dict[str, Any] = {
        "task_id": info.task_id,
        "name": info.name,
        "status": info.status.value,
        "created_at": info.created_at.isoformat(),
        "started_at": info.started_at.isoformat() if info.started_at else None,
        "completed_at": info.completed_at.isoformat() if info.completed_at else None,
        "error": error,
        "progress": info.progress,
        "progress_message": info.progress_message,
        "metadata": safe_json(info.metadata),
        "worker_pid": info.worker_pid,
        "timeout": info.timeout,
        "priority": info.priority,
        "group": info.group,
        "attempt": info.attempt,
        "previous_errors": [e if tracebacks else e.split("\n", 1)[0] for e in info.previous_errors],
    }
    if tracebacks:
        data["traceback"] = info.traceback
    return data


def group_to_json(info: GroupInfo) -> dict[str, Any]:
    """The JSON form of a GroupInfo."""
    return {
        "group": info.group,
        "total": info.total,
        "pending": info.pending,
        "running": info.running,
        "completed": info.completed,
        "failed": info.failed,
        "cancelled": info.cancelled,
        "progress": info.progress,
        "eta": info.eta,
    }


def safe_json(value: Any, depth: int = 0) -> Any:
    """A JSON-serialisable copy of ``value``, bounded in depth, width and size."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT] + "…"
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_DIGITS * 3:  # str() of a huge int is refused (and slow)
            return f"<int of {value.bit_length()} bits>"
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return f"<{_type_name(value)} nested too deep>"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for i, (key, item) in enumerate(value.items()):
            if i >= _MAX_ITEMS:
                out["…"] = f"{len(value) - _MAX_ITEMS} more items"
                break
            out[key if isinstance(key, str) else _short_repr(key)] = safe_json(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        items = [safe_json(item, depth + 1) for item in value[:_MAX_ITEMS]]
        if len(value) > _MAX_ITEMS:
            items.append(f"… {len(value) - _MAX_ITEMS} more items")
        return items
    return _short_repr(value)


def _type_name(value: Any) -> str:
    return type(value).__qualname__


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        return f"<{_type_name(value)}: repr failed>"
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"


async def json_bytes(value: Any) -> bytes:
    """``json.dumps(value, allow_nan=False)`` as UTF-8 bytes, without stalling the event loop.

    A task's result can be as large as a worker may send (hundreds of MB):
    ``json.dumps`` encodes it in one C call that holds the loop (and, in a
    thread, the GIL) for as long as it takes. The pure-Python encoder yields
    small pieces; a checkpoint every few thousand of them lets every other
    request, stream and the scheduler run meanwhile.

    Raises:
        TypeError: Something in ``value`` is not JSON-serialisable.
        ValueError: It holds NaN or an infinity, or a circular reference.
        RecursionError: It is nested too deep.

    **Cancellation:** Stops encoding at the next checkpoint; nothing else is affected.
    """
    parts: list[bytes] = []
    pieces: list[str] = []
    for piece in json.JSONEncoder(allow_nan=False).iterencode(value):
        pieces.append(piece)
        if len(pieces) >= _PIECES_PER_STEP:
            parts.append("".join(pieces).encode())
            pieces.clear()
            await trio.lowlevel.checkpoint()
    parts.append("".join(pieces).encode())
    await trio.lowlevel.checkpoint()
    return b"".join(parts)
