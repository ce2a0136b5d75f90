"""ASGI integration: run a TaskManager for an application's lifespan, and serve
a JSON/SSE API and a live dashboard over it.

No web framework is needed (these are plain ASGI callables), and none is
imported. Serve with hypercorn's trio worker::

    hypercorn --worker-class trio myapp:app

* :class:`TaskManagerLifespan` wraps any ASGI app: the manager starts on
  ``lifespan.startup`` and shuts down on ``lifespan.shutdown``; request
  handlers reach it as ``scope["genro_tasks"]`` (or the wrapper's ``.tasks``).
* :class:`TaskAPI` is a mountable ASGI app over a manager: list, info,
  cancel (POST, behind an ``authorize`` hook), result, Server-Sent Events for
  one task or all tasks, and the dashboard page. It never lets a remote
  caller choose code to run: submission stays in your own handlers.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import trio

from ._manager import TaskManager
from ._task import TaskInfo, TaskStatus

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: ``authorize(scope, action, task_id)``: True (or an awaitable of True) allows the action.
Authorize = Callable[[Scope, str, "str | None"], "bool | Awaitable[bool]"]

SCOPE_KEY = "genro_tasks"
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_MAX_LIMIT = 500
_KEEPALIVE = 15.0
_CSRF_HEADER = b"x-genro-tasks"


# ----------------------------------------------------------------------------- lifespan
class TaskManagerLifespan:
    """Wrap an ASGI app so that a TaskManager lives exactly as long as the app.

    On ``lifespan.startup`` the manager is started before the wrapped app sees
    the event; on shutdown it is shut down (``wait`` and ``cancel_pending`` as
    given) after the app has finished its own shutdown. Every ``http`` and
    ``websocket`` scope gets the manager as ``scope["genro_tasks"]``. Works
    whether or not the wrapped app handles lifespan events itself.

    Args:
        app: The ASGI application to wrap.
        manager: The TaskManager to run (default: ``TaskManager()``).
        shutdown_wait: Passed to ``shutdown(wait=...)``.
        shutdown_cancel_pending: Passed to ``shutdown(cancel_pending=...)``.
    """

    def __init__(
        self,
        app: ASGIApp,
        manager: TaskManager | None = None,
        *,
        shutdown_wait: bool = True,
        shutdown_cancel_pending: bool = False,
    ) -> None:
        self.app = app
        self.tasks = manager if manager is not None else TaskManager()
        self._wait = shutdown_wait
        self._cancel_pending = shutdown_cancel_pending

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point.

        **Cancellation:** For a request, as the wrapped app. During lifespan,
        cancellation while the manager shuts down kills every worker first
        (see :meth:`TaskManager.shutdown`).
        """
        if scope["type"] != "lifespan":
            scope[SCOPE_KEY] = self.tasks
            await self.app(scope, receive, send)
            return
        await self._lifespan(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen: list[str] = []
        startup_error: list[BaseException] = []

        async def app_receive() -> Message:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "lifespan.startup":
                try:
                    await self.tasks.startup()
                except Exception as exc:
                    startup_error.append(exc)
            return message

        async def app_send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete" and startup_error:
                message = {"type": "lifespan.startup.failed", "message": f"TaskManager: {startup_error[0]}"}
            elif kind == "lifespan.shutdown.complete":
                await self.tasks.shutdown(wait=self._wait, cancel_pending=self._cancel_pending)
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception:
            if seen:
                raise
        if seen:
            return
        # The wrapped app does not do lifespan: answer the events ourselves.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.tasks.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": f"TaskManager: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.tasks.shutdown(wait=self._wait, cancel_pending=self._cancel_pending)
                await send({"type": "lifespan.shutdown.complete"})
                return


def task_manager(scope: Scope) -> TaskManager:
    """Return the TaskManager that :class:`TaskManagerLifespan` put in ``scope``.

    Raises:
        LookupError: The app is not wrapped in TaskManagerLifespan.
    """
    try:
        manager = scope[SCOPE_KEY]
    except KeyError:
        raise LookupError(
            "no TaskManager in this scope: wrap the app in genro_tasks.asgi.TaskManagerLifespan"
        ) from None
    if not isinstance(manager, TaskManager):
        raise LookupError(f"scope[{SCOPE_KEY!r}] is not a TaskManager")
    return manager


# ---------------------------------------------------------------------------- JSON API
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


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
        self._max_streams = max_streams
        self._streams = 0

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
        except _HTTPError as exc:
            await _send_json(send, exc.status, {"error": exc.message})

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
            await _send_html(send, _dashboard_html())
            return
        head, *rest = parts
        if self._authorize_reads and not (head == "tasks" and len(rest) == 2 and rest[1] == "cancel"):
            target = _valid_id(rest[0]) if head == "tasks" and rest else None
            if not await self._allowed(scope, "read", target):
                raise _HTTPError(403, "not authorised to read tasks")
        if head == "config" and not rest:
            self._method(method, "GET")
            await _send_json(send, 200, {"can_cancel": await self._allowed(scope, "cancel", None)})
        elif head == "events" and not rest:
            self._method(method, "GET")
            await self._stream_all(tm, receive, send)
        elif head == "tasks" and not rest:
            self._method(method, "GET")
            await _send_json(send, 200, self._list(tm, query))
        elif head == "tasks":
            task_id = _valid_id(rest[0])
            action = rest[1] if len(rest) > 1 else None
            if len(rest) > 2:
                raise _HTTPError(404, "no such route")
            if action is None:
                self._method(method, "GET")
                await _send_json(send, 200, info_to_json(await _info(tm, task_id), tracebacks=self._tracebacks))
            elif action == "cancel":
                self._method(method, "POST")
                await self._cancel(tm, scope, task_id, query, send)
            elif action == "result":
                self._method(method, "GET")
                await self._result(tm, task_id, send)
            elif action == "events":
                self._method(method, "GET")
                await self._stream_one(tm, task_id, receive, send)
            else:
                raise _HTTPError(404, "no such route")
        else:
            raise _HTTPError(404, "no such route")

    @staticmethod
    def _method(method: str, expected: str) -> None:
        if method != expected:
            raise _HTTPError(405, f"use {expected}")

    def _list(self, tm: TaskManager, query: dict[str, list[str]]) -> dict[str, Any]:
        status: TaskStatus | None = None
        if "status" in query:
            try:
                status = TaskStatus(query["status"][0])
            except ValueError:
                allowed = ", ".join(s.value for s in TaskStatus)
                raise _HTTPError(400, f"status must be one of: {allowed}") from None
        limit = _int_param(query, "limit", 50, 1, _MAX_LIMIT)
        offset = _int_param(query, "offset", 0, 0, 10**9)
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
            raise _HTTPError(403, "missing header 'X-Genro-Tasks: 1' (it protects against cross-site requests)")
        if self._authorize is None:
            raise _HTTPError(403, "cancel is disabled: the application did not configure TaskAPI(authorize=...)")
        if not await self._allowed(scope, "cancel", task_id):
            raise _HTTPError(403, f"not authorised to cancel task {task_id!r}")
        grace: float | None = None
        if "grace" in query:
            try:
                grace = float(query["grace"][0])
            except ValueError:
                grace = -1.0
            if not 0 <= grace <= 3600 or math.isnan(grace):
                raise _HTTPError(400, "grace must be a number of seconds between 0 and 3600")
        try:
            cancelled = await tm.cancel(task_id, grace=grace)
        except KeyError:
            raise _HTTPError(404, f"Task not found: {task_id}") from None
        body: dict[str, Any] = {"cancelled": cancelled}
        try:
            body["task"] = info_to_json(await tm.info(task_id), tracebacks=self._tracebacks)
        except KeyError:  # already forgotten by the retention limits
            pass
        await _send_json(send, 200, body)

    async def _result(self, tm: TaskManager, task_id: str, send: Send) -> None:
        info = await _info(tm, task_id)
        if info.status is not TaskStatus.COMPLETED:
            body: dict[str, Any] = {"error": f"task {task_id!r} is {info.status.value}, not completed"}
            if info.status.is_terminal:
                body["task"] = info_to_json(info, tracebacks=self._tracebacks)
            await _send_json(send, 409, body)
            return
        try:
            value = await tm.result(task_id)
        except KeyError:
            raise _HTTPError(404, f"Task not found: {task_id}") from None
        except Exception as exc:  # e.g. the result cannot be unpickled in this process
            await _send_json(
                send, 409, {"error": f"the result of task {task_id!r} cannot be read: {type(exc).__name__}"}
            )
            return
        try:
            payload = json.dumps({"task_id": task_id, "result": value}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            await _send_json(
                send, 409, {"error": f"the result of task {task_id!r} is not JSON-serialisable ({type(exc).__name__})"}
            )
            return
        await _send_body(send, 200, payload.encode(), b"application/json")

    async def _stream_one(self, tm: TaskManager, task_id: str, receive: Receive, send: Send) -> None:
        try:
            watcher = tm.watch(task_id)
        except KeyError:
            raise _HTTPError(404, f"Task not found: {task_id}") from None

        async def events(emit: Callable[[TaskInfo], Awaitable[None]]) -> None:
            async for info in watcher:
                await emit(info)

        await self._sse(events, receive, send)

    async def _stream_all(self, tm: TaskManager, receive: Receive, send: Send) -> None:
        async def events(emit: Callable[[TaskInfo], Awaitable[None]]) -> None:
            async with tm.open_change_stream(max_pending=2_000) as changes:
                async for info in changes:
                    await emit(info)

        await self._sse(events, receive, send)

    async def _sse(
        self,
        events: Callable[[Callable[[TaskInfo], Awaitable[None]]], Awaitable[None]],
        receive: Receive,
        send: Send,
    ) -> None:
        if self._streams >= self._max_streams:
            raise _HTTPError(503, f"too many open event streams (max_streams={self._max_streams}); retry later")
        self._streams += 1
        try:
            await self._sse_open(events, receive, send)
        finally:
            self._streams -= 1

    async def _sse_open(
        self,
        events: Callable[[Callable[[TaskInfo], Awaitable[None]]], Awaitable[None]],
        receive: Receive,
        send: Send,
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )

        async def emit(info: TaskInfo) -> None:
            data = json.dumps(info_to_json(info, tracebacks=self._tracebacks))
            await send(
                {"type": "http.response.body", "body": f"event: task\ndata: {data}\n\n".encode(), "more_body": True}
            )

        async def keepalive() -> None:
            while True:
                await trio.sleep(_KEEPALIVE)
                await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})

        async def disconnected(scope: trio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(disconnected, nursery.cancel_scope)
            nursery.start_soon(keepalive)
            await events(emit)
            await send({"type": "http.response.body", "body": b"event: end\ndata: {}\n\n", "more_body": False})
            nursery.cancel_scope.cancel()


async def _info(tm: TaskManager, task_id: str) -> TaskInfo:
    try:
        return await tm.info(task_id)
    except KeyError:
        raise _HTTPError(404, f"Task not found: {task_id}") from None


def _valid_id(raw: str) -> str:
    if not _ID_RE.fullmatch(raw):
        raise _HTTPError(
            400, "invalid task id: use 1-128 letters, digits and . _ : @ -, starting with a letter or digit"
        )
    return raw


def _int_param(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    if name not in query:
        return default
    try:
        value = int(query[name][0])
    except ValueError:
        raise _HTTPError(400, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise _HTTPError(400, f"{name} must be between {low} and {high}")
    return value


async def _send_body(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, payload: Any) -> None:
    await _send_body(send, status, json.dumps(payload).encode(), b"application/json")


async def _send_html(send: Send, page: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(page)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
                (
                    b"content-security-policy",
                    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
                ),
            ],
        }
    )
    await send({"type": "http.response.body", "body": page})


_PAGE: bytes | None = None


def _dashboard_html() -> bytes:
    global _PAGE
    if _PAGE is None:
        _PAGE = resources.files("genro_tasks").joinpath("dashboard.html").read_bytes()
    return _PAGE


__all__ = ("SCOPE_KEY", "Authorize", "TaskAPI", "TaskManagerLifespan", "info_to_json", "task_manager")
