"""Server-side listing: filter, search, sort and page the tasks, with counts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .._manager import TaskManager
from .._task import TaskInfo, TaskStatus
from ._http import HTTPError, int_param
from ._serialize import info_to_json

MAX_LIMIT = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RANK = {s: i for i, s in enumerate(TaskStatus)}

#: ``?sort=`` keys (prefix with ``-`` for descending).
SORT_KEYS: dict[str, Callable[[TaskInfo], Any]] = {
    "created_at": lambda i: i.created_at,
    "started_at": lambda i: i.started_at or _EPOCH,
    "completed_at": lambda i: i.completed_at or _EPOCH,
    "task_id": lambda i: i.task_id,
    "name": lambda i: i.name,
    "status": lambda i: _RANK[i.status],
    "progress": lambda i: -1.0 if i.progress is None else i.progress,
    "priority": lambda i: i.priority,
}


def list_page(tm: TaskManager, query: dict[str, list[str]], *, tracebacks: bool) -> dict[str, Any]:
    """Answer ``GET /tasks``: ``status``, ``q`` (search), ``sort``, ``limit``, ``offset``,
    ``group`` (only that group's tasks) and ``ungrouped=1`` (only tasks without a group).

    ``counts`` holds how many retained tasks have each status (whatever the
    filters), so a client paging through a large table still sees totals.
    """
    status: TaskStatus | None = None
    if query.get("status", [""])[0]:
        try:
            status = TaskStatus(query["status"][0])
        except ValueError:
            allowed = ", ".join(s.value for s in TaskStatus)
            raise HTTPError(400, f"status must be one of: {allowed}") from None
    sort = query.get("sort", ["created_at"])[0] or "created_at"
    key = SORT_KEYS.get(sort.removeprefix("-"))
    if key is None:
        allowed = ", ".join(SORT_KEYS)
        raise HTTPError(400, f"sort must be one of: {allowed} (prefix with '-' for descending), not {sort!r}")
    limit = int_param(query, "limit", 50, 1, MAX_LIMIT)
    offset = int_param(query, "offset", 0, 0, 10**9)
    text = query.get("q", [""])[0].strip().lower()
    group = query.get("group", [""])[0]
    flag = query.get("ungrouped", [""])[0].lower()
    if flag not in ("", "0", "1", "false", "true"):
        raise HTTPError(400, f"ungrouped must be 1 (or true) to list only tasks without a group, or 0; not {flag!r}")
    ungrouped = flag in ("1", "true")

    infos = tm.list_tasks()
    counts = dict.fromkeys((s.value for s in TaskStatus), 0)
    for info in infos:
        counts[info.status.value] += 1
    if group:
        infos = [i for i in infos if i.group == group]
    elif ungrouped:
        infos = [i for i in infos if i.group is None]
    if status is not None:
        infos = [i for i in infos if i.status is status]
    if text:
        infos = [i for i in infos if text in _haystack(i)]
    if sort != "created_at":  # the listing is already oldest first
        infos.sort(key=key, reverse=sort.startswith("-"))
    page = infos[offset : offset + limit]
    return {
        "tasks": [info_to_json(i, tracebacks=tracebacks) for i in page],
        "total": len(infos),
        "limit": limit,
        "offset": offset,
        "counts": counts,
    }


def _haystack(info: TaskInfo) -> str:
    return f"{info.task_id}\n{info.name}\n{info.progress_message or ''}\n{info.error or ''}".lower()
