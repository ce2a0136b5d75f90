"""The JSON API and dashboard routes over a TaskManager."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from .._manager import TaskManager
from .._task import TaskInfo, TaskStatus
from ._dashboard import send_page, send_script, status_table
from ._events import EventStreams
from ._http import HTTPError, Receive, Scope, Send, check_method, head_only, query_params, send_body, send_json
from ._lifespan import METRICS_KEY, task_manager
from ._listing import list_page
from ._serialize import group_to_json, info_to_json, json_bytes

#: ``authorize(scope, action, task_id)``: True (or an awaitable of True) allows the action.
Authorize = Callable[[Scope, str, "str | None"], "bool | Awaitable[bool]"]

_CSRF_HEADER = b"x-genro-tasks"


class TaskAPI:
    """A mountable ASGI app: JSON API, SSE streams and a dashboard over a TaskManager.

    Routes, relative to where it is mounted (``scope["root_path"]``). Every
    GET also answers HEAD; a wrong method gets 405 with ``Allow``, a query
    parameter given twice 400. Task ids
    are one percent-encoded path segment each, so every id ``submit``
    accepts is addressable (``export/42`` is ``export%2F42``).

    ===========================  ==================================================
    ``GET /``                    the dashboard page (its script: ``/dashboard.js``)
    ``GET /config``              what the dashboard may do, and the statuses
    ``GET /tasks``               list: ``?status=&q=&sort=-created_at&limit=50&offset=0``
                                 (``total`` matching, ``counts`` by status);
                                 ``&group=name`` a group's tasks, ``&ungrouped=1``
                                 only tasks without a group
    ``GET /tasks/{id}``          one task's info
    ``POST /tasks/{id}/cancel``  cancel (``authorize``; ``?grace=5`` optional)
    ``POST /tasks/{id}/requeue`` run a finished task again (``authorize``, action ``requeue``)
    ``GET /groups``              every group: counts, aggregate progress, ``eta``
    ``GET /groups/{group}``      one group
    ``POST /groups/{group}/cancel``  cancel its queued and running tasks
                                 (``authorize``, action ``cancel_group``)
    ``/group?name={group}``      the same two group routes with the name in the query
                                 (``/group/cancel?name=``), as ``/task?id=`` for tasks
    ``GET /tasks/{id}/result``   the result if COMPLETED and JSON-serialisable, else 409
    ``GET /tasks/{id}/events``   Server-Sent Events: the task's snapshots until it ends
    ``/task?id={id}`` ...        the same five routes with the id in the query
                                 (``/task/cancel?id=``...): browsers resolve ``..``
                                 in a path even when percent-encoded
    ``GET /events``              Server-Sent Events: ``hello`` once subscribed, then
                                 every task's changes (``resync`` if some were dropped)
    ``GET /stats``               ``TaskManager.statistics()`` as JSON (the pool view)
    ``GET /metrics``             Prometheus text format (``TaskManagerLifespan(metrics=True)``)
    ``POST /clear``              forget finished tasks (``authorize(scope, "clear", None)``)
    ===========================  ==================================================

    Every POST needs the ``X-Genro-Tasks: 1`` header (a cross-site form cannot
    send it) and ``authorize`` to return True.

    Args:
        manager: The TaskManager, or None to use ``scope["genro_tasks"]``
            (set by :class:`TaskManagerLifespan`).
        authorize: ``authorize(scope, action, task_id) -> bool`` (or awaitable).
            Actions: ``cancel``, ``requeue``, ``cancel_group`` (its third
            argument is then the group's name), ``clear`` (and ``read`` with
            ``authorize_reads``).
            Without it every mutating action is refused with 403.
        expose_tracebacks: Include remote tracebacks in errors (default: no,
            errors are reduced to their first line).
        authorize_reads: If True, every read (list, info, result, streams,
            the dashboard's data) also needs ``authorize(scope, "read",
            task_id_or_None)`` to return True; otherwise 403. Default False:
            reads are open, so mount the API where only operators reach it.
        max_streams: Most Server-Sent-Events streams open at once (503 beyond).
        stream_backlog: Most distinct tasks an event stream buffers for a
            slow client (newest state per task); beyond it the oldest are
            dropped and the client is sent ``resync``.

    Raises:
        ValueError: ``max_streams`` or ``stream_backlog`` is out of range.
    """

    def __init__(
        self,
        manager: TaskManager | None = None,
        *,
        authorize: Authorize | None = None,
        expose_tracebacks: bool = False,
        authorize_reads: bool = False,
        max_streams: int = 64,
        stream_backlog: int = 10_000,
    ) -> None:
        if isinstance(stream_backlog, bool) or not isinstance(stream_backlog, int) or stream_backlog < 1:
            raise ValueError(f"stream_backlog must be a positive int (tasks), not {stream_backlog!r}")
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 0:
            raise ValueError(f"max_streams must be an int >= 0, not {max_streams!r}")
        self._manager = manager
        self._authorize = authorize
        self._tracebacks = expose_tracebacks
        self._authorize_reads = authorize_reads
        self._streams = EventStreams(max_streams, expose_tracebacks, stream_backlog)

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
            if scope["method"] == "HEAD":
                send = head_only(send)
            await send_json(send, exc.status, {"error": exc.message}, exc.headers)

    def manager(self, scope: Scope) -> TaskManager:
        return self._manager if self._manager is not None else task_manager(scope)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        head = method == "HEAD"
        if head:
            send = head_only(send)
        parts = _segments(scope)
        query = query_params(scope)
        tm = self.manager(scope)
        if not parts or parts == ["dashboard.js"]:  # static: they hold no task data
            check_method(method, "GET")
            await (send_script(send) if parts else send_page(send))
            return
        first, *rest = parts
        if method != "POST" and self._authorize_reads:
            target = rest[0] if first == "tasks" and rest else query.get("id", [None])[0] if first == "task" else None
            if not await self._allowed(scope, "read", target):
                raise HTTPError(403, "not authorised to read tasks")
        if first == "config" and not rest:
            check_method(method, "GET")
            await send_json(send, 200, await self._config(scope))
        elif first == "events" and not rest:
            check_method(method, "GET")
            await self._streams.all(tm, receive, send, head=head)
        elif first == "tasks" and not rest:
            check_method(method, "GET")
            await send_json(send, 200, list_page(tm, query, tracebacks=self._tracebacks))
        elif first == "stats" and not rest:
            check_method(method, "GET")
            await send_json(send, 200, dataclasses.asdict(tm.statistics()))
        elif first == "metrics" and not rest:
            check_method(method, "GET")
            metrics = scope.get(METRICS_KEY)
            if metrics is None:
                raise HTTPError(
                    404,
                    "metrics are off: use TaskManagerLifespan(..., metrics=True) "
                    "(and pip install 'genro-tasks[metrics]')",
                )
            body = metrics.exposition()  # CPU only, and it reads the manager: on this thread
            await send_body(send, 200, body, b"text/plain; version=0.0.4; charset=utf-8")
        elif first == "groups" and len(rest) <= 2:
            await self._groups(tm, scope, method, rest, send)
        elif first == "group" and len(rest) <= 1:  # ?name=...: for names a browser cannot put in a path
            if not query.get("name", [""])[0]:
                raise HTTPError(400, "missing ?name=<group name>")
            await self._groups(tm, scope, method, [query["name"][0], *rest], send)
        elif first == "clear" and not rest:
            check_method(method, "POST")
            await self._guard(scope, "clear", None)
            await send_json(send, 200, {"cleared": tm.clear_completed()})
        elif (first == "tasks" and len(rest) <= 2) or (first == "task" and len(rest) <= 1):
            if first == "task":  # ?id=...: for ids a browser cannot put in a path ("." and "..")
                if not query.get("id", [""])[0]:
                    raise HTTPError(400, "missing ?id=<task id>")
                task_id, action = query["id"][0], (rest[0] if rest else None)
            else:
                task_id, action = rest[0], (rest[1] if len(rest) > 1 else None)
            if action is None:
                check_method(method, "GET")
                await send_json(send, 200, info_to_json(await _info(tm, task_id), tracebacks=self._tracebacks))
            elif action == "cancel":
                check_method(method, "POST")
                await self._cancel(tm, scope, task_id, query, send)
            elif action == "requeue":
                check_method(method, "POST")
                await self._requeue(tm, scope, task_id, send)
            elif action == "result":
                check_method(method, "GET")
                await self._result(tm, task_id, send)
            elif action == "events":
                check_method(method, "GET")
                await self._streams.one(tm, task_id, receive, send, head=head)
            else:
                raise HTTPError(404, "no such route")
        else:
            raise HTTPError(404, "no such route")

    async def _groups(self, tm: TaskManager, scope: Scope, method: str, rest: list[str], send: Send) -> None:
        if not rest:
            check_method(method, "GET")
            await send_json(send, 200, {"groups": [group_to_json(g) for g in tm.groups()]})
            return
        group = rest[0]
        if len(rest) == 1:
            check_method(method, "GET")
            try:
                info = tm.group_info(group)
            except KeyError:
                raise HTTPError(404, f"Group not found: {group}") from None
            await send_json(send, 200, group_to_json(info))
        elif rest[1] == "cancel":
            check_method(method, "POST")
            await self._guard(scope, "cancel_group", group)
            try:
                cancelled = await tm.cancel_group(group)
            except KeyError:
                raise HTTPError(404, f"Group not found: {group}") from None
            await send_json(send, 200, {"cancelled": cancelled, "group": group_to_json(tm.group_info(group))})
        else:
            raise HTTPError(404, "no such route")

    async def _requeue(self, tm: TaskManager, scope: Scope, task_id: str, send: Send) -> None:
        await self._guard(scope, "requeue", task_id)
        try:
            await tm.requeue(task_id)
        except KeyError:
            raise HTTPError(404, f"Task not found: {task_id}") from None
        except ValueError as exc:
            raise HTTPError(409, str(exc)) from None
        except RuntimeError as exc:  # ManagerClosed
            raise HTTPError(503, str(exc)) from None
        await send_json(send, 200, {"task": info_to_json(await _info(tm, task_id), tracebacks=self._tracebacks)})

    async def _config(self, scope: Scope) -> dict[str, Any]:
        return {
            "can_cancel": await self._allowed(scope, "cancel", None),
            "can_requeue": await self._allowed(scope, "requeue", None),
            "can_cancel_group": await self._allowed(scope, "cancel_group", None),
            "can_clear": await self._allowed(scope, "clear", None),
            "statuses": status_table(),
        }

    async def _allowed(self, scope: Scope, action: str, task_id: str | None) -> bool:
        if self._authorize is None:
            return False
        verdict = self._authorize(scope, action, task_id)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return verdict is True

    async def _guard(self, scope: Scope, action: str, task_id: str | None) -> None:
        """Every mutating action: the anti-CSRF header, then ``authorize``; else 403."""
        headers = dict(scope.get("headers", []))
        if headers.get(_CSRF_HEADER) != b"1":
            raise HTTPError(403, "missing header 'X-Genro-Tasks: 1' (it protects against cross-site requests)")
        if self._authorize is None:
            raise HTTPError(403, f"{action} is disabled: the application did not configure TaskAPI(authorize=...)")
        if not await self._allowed(scope, action, task_id):
            target = f" task {task_id!r}" if task_id is not None else " tasks"
            raise HTTPError(403, f"not authorised to {action}{target}")

    async def _cancel(
        self, tm: TaskManager, scope: Scope, task_id: str, query: dict[str, list[str]], send: Send
    ) -> None:
        await self._guard(scope, "cancel", task_id)
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
            payload = await json_bytes({"task_id": task_id, "result": value})
        except (TypeError, ValueError, RecursionError) as exc:
            await send_json(
                send, 409, {"error": f"the result of task {task_id!r} is not JSON-serialisable ({type(exc).__name__})"}
            )
            return
        await send_body(send, 200, payload, b"application/json")


async def _info(tm: TaskManager, task_id: str) -> TaskInfo:
    try:
        return await tm.info(task_id)
    except KeyError:
        raise HTTPError(404, f"Task not found: {task_id}") from None


def _segments(scope: Scope) -> list[str]:
    """The path's segments below the mount point, each percent-decoded on its own.

    Splitting the *raw* path before decoding is what makes every task id
    addressable: ``export/42`` arrives as ``export%2F42``, one segment.
    """
    raw = scope.get("raw_path")
    if raw is None:  # the server gives no raw path: ids containing "/" cannot be told apart
        segments = [s for s in scope["path"].split("/") if s]
    else:
        try:
            segments = [unquote_to_bytes(s).decode("utf-8") for s in bytes(raw).split(b"/") if s]
        except UnicodeDecodeError:
            raise HTTPError(400, "the path is not valid percent-encoded UTF-8") from None
    root = [s for s in scope.get("root_path", "").split("/") if s]
    if root and segments[: len(root)] == root:
        segments = segments[len(root) :]
    return segments
