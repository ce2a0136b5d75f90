"""The JSON API and dashboard routes over a TaskManager."""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from .._manager import TaskManager
from .._task import TaskInfo, TaskStatus
from ._dashboard import dashboard_html, send_html
from ._events import EventStreams
from ._http import HTTPError, Receive, Scope, Send, int_param, send_body, send_json
from ._lifespan import task_manager
from ._serialize import info_to_json

#: ``authorize(scope, action, task_id)``: True (or an awaitable of True) allows the action.
Authorize = Callable[[Scope, str, "str | None"], "bool | Awaitable[bool]"]

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_MAX_LIMIT = 500
_CSRF_HEADER = b"x-genro-tasks"


class TaskAPI:
    """A mountable ASGI app: JSON API, SSE streams and a dashboard over a TaskManager.

    Routes, relative to where it is mounted (``scope["root_path"]``):

    ========================  =====================================================
    ``GET /``                 the dashboard (one self-contained HTML page)
    ``GET /config``           what the dashboard may do (``{"can_cancel": bool}``)
    ``GET /tasks``            list: ``?status=running&limit=50&offset=0``
    ``GET /tasks/{id}``       one task's info
    ``POST /tasks/{id}/cancel``  cancel (needs ``authorize``; ``?grace=5`` optional)
    ``GET /tasks/{id}/result``   the result if COMPLETED and JSON-serialisable, else 409
    ``GET /tasks/{id}/events``   Server-Sent Events: the task's snapshots until it ends
    ``GET /events``           Server-Sent Events: every task's changes
    ========================  =====================================================

    Args:
        manager: The TaskManager, or None to use ``scope["genro_tasks"]``
            (set by :class:`TaskManagerLifespan`).
        authorize: ``authorize(scope, action, task_id) -> bool`` (or awaitable).
            Without it every mutating action (cancel) is refused with 403.
        expose_tracebacks: Include remote tracebacks in errors (default: no,
            errors are reduced to their first line).
        authorize_reads: If True, every read (list, info, result, streams,
            the dashboard's data) also needs ``authorize(scope, "read",
            task_id_or_None)`` to return True; otherwise 403. Default False:
            reads are open, so mount the API where only operators reach it.
        max_streams: Most Server-Sent-Events streams open at once (503 beyond).
    """

    def __init__(
        self,
        manager: TaskManager | None = None,
        *,
        authorize: Authorize | None = None,
        expose_tracebacks: bool = False,
        authorize_reads: bool = False,
        max_streams: int = 64,
    ) -> None:
        self._manager = manager
        self._authorize = authorize
        self._tracebacks = expose_tracebacks
        self._authorize_reads = authorize_reads
        self._streams = EventStreams(max_streams, expose_tracebacks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point.

        **Cancellation:** Cancelling a request (or the client disconnecting
        from an SSE stream) ends the response; it never touches a task. A
        cancel request that already started its kill lets it finish.
        """
        if scope["type"] == "lifespan":  # mounted directly as the app: nothing to do
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except HTTPError as exc:
            await send_json(send, exc.status, {"error": exc.message})

    def manager(self, scope: Scope) -> TaskManager:
        return self._manager if self._manager is not None else task_manager(scope)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        parts = [p for p in path.split("/") if p]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        tm = self.manager(scope)
        if not parts:
            self._method(method, "GET")
            await send_html(send, dashboard_html())
            return
        head, *rest = parts
        if self._authorize_reads and not (head == "tasks" and len(rest) == 2 and rest[1] == "cancel"):
            target = _valid_id(rest[0]) if head == "tasks" and rest else None
            if not await self._allowed(scope, "read", target):
                raise HTTPError(403, "not authorised to read tasks")
        if head == "config" and not rest:
            self._method(method, "GET")
            await send_json(send, 200, {"can_cancel": await self._allowed(scope, "cancel", None)})
        elif head == "events" and not rest:
            self._method(method, "GET")
            await self._streams.all(tm, receive, send)
        elif head == "tasks" and not rest:
            self._method(method, "GET")
            await send_json(send, 200, self._list(tm, query))
        elif head == "tasks":
            task_id = _valid_id(rest[0])
            action = rest[1] if len(rest) > 1 else None
            if len(rest) > 2:
                raise HTTPError(404, "no such route")
            if action is None:
                self._method(method, "GET")
                await send_json(send, 200, info_to_json(await _info(tm, task_id), tracebacks=self._tracebacks))
            elif action == "cancel":
                self._method(method, "POST")
                await self._cancel(tm, scope, task_id, query, send)
            elif action == "result":
                self._method(method, "GET")
                await self._result(tm, task_id, send)
            elif action == "events":
                self._method(method, "GET")
                await self._streams.one(tm, task_id, receive, send)
            else:
                raise HTTPError(404, "no such route")
        else:
            raise HTTPError(404, "no such route")

    @staticmethod
    def _method(method: str, expected: str) -> None:
        if method != expected:
            raise HTTPError(405, f"use {expected}")

    def _list(self, tm: TaskManager, query: dict[str, list[str]]) -> dict[str, Any]:
        status: TaskStatus | None = None
        if "status" in query:
            try:
                status = TaskStatus(query["status"][0])
            except ValueError:
                allowed = ", ".join(s.value for s in TaskStatus)
                raise HTTPError(400, f"status must be one of: {allowed}") from None
        limit = int_param(query, "limit", 50, 1, _MAX_LIMIT)
        offset = int_param(query, "offset", 0, 0, 10**9)
        infos = tm.list_tasks(status)
        page = infos[offset : offset + limit]
        return {
            "tasks": [info_to_json(i, tracebacks=self._tracebacks) for i in page],
            "total": len(infos),
            "limit": limit,
            "offset": offset,
        }

    async def _allowed(self, scope: Scope, action: str, task_id: str | None) -> bool:
        if self._authorize is None:
            return False
        verdict = self._authorize(scope, action, task_id)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return verdict is True

    async def _cancel(
        self, tm: TaskManager, scope: Scope, task_id: str, query: dict[str, list[str]], send: Send
    ) -> None:
        headers = dict(scope.get("headers", []))
        if headers.get(_CSRF_HEADER) != b"1":
            raise HTTPError(403, "missing header 'X-Genro-Tasks: 1' (it protects against cross-site requests)")
        if self._authorize is None:
            raise HTTPError(403, "cancel is disabled: the application did not configure TaskAPI(authorize=...)")
        if not await self._allowed(scope, "cancel", task_id):
            raise HTTPError(403, f"not authorised to cancel task {task_id!r}")
        grace: float | None = None
        if "grace" in query:
            try:
                grace = float(query["grace"][0])
            except ValueError:
                grace = -1.0
            if not 0 <= grace <= 3600 or math.isnan(grace):
                raise HTTPError(400, "grace must be a number of seconds between 0 and 3600")
        try:
            cancelled = await tm.cancel(task_id, grace=grace)
        except KeyError:
            raise HTTPError(404, f"Task not found: {task_id}") from None
        body: dict[str, Any] = {"cancelled": cancelled}
        try:
            body["task"] = info_to_json(await tm.info(task_id), tracebacks=self._tracebacks)
        except KeyError:  # already forgotten by the retention limits
            pass
        await send_json(send, 200, body)

    async def _result(self, tm: TaskManager, task_id: str, send: Send) -> None:
        info = await _info(tm, task_id)
        if info.status is not TaskStatus.COMPLETED:
            body: dict[str, Any] = {"error": f"task {task_id!r} is {info.status.value}, not completed"}
            if info.status.is_terminal:
                body["task"] = info_to_json(info, tracebacks=self._tracebacks)
            await send_json(send, 409, body)
            return
        try:
            value = await tm.result(task_id)
        except KeyError:
            raise HTTPError(404, f"Task not found: {task_id}") from None
        except Exception as exc:  # e.g. the result cannot be unpickled in this process
            await send_json(
                send, 409, {"error": f"the result of task {task_id!r} cannot be read: {type(exc).__name__}"}
            )
            return
        try:
            payload = json.dumps({"task_id": task_id, "result": value}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            await send_json(
                send, 409, {"error": f"the result of task {task_id!r} is not JSON-serialisable ({type(exc).__name__})"}
            )
            return
        await send_body(send, 200, payload.encode(), b"application/json")


async def _info(tm: TaskManager, task_id: str) -> TaskInfo:
    try:
        return await tm.info(task_id)
    except KeyError:
        raise HTTPError(404, f"Task not found: {task_id}") from None


def _valid_id(raw: str) -> str:
    if not _ID_RE.fullmatch(raw):
        raise HTTPError(
            400, "invalid task id: use 1-128 letters, digits and . _ : @ -, starting with a letter or digit"
        )
    return raw
