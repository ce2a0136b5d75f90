"""Server-Sent Events: one task's snapshots, or every task's changes."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._manager import TaskManager
from .._task import TaskInfo
from ._http import HTTPError, Receive, Send
from ._serialize import info_to_json

_KEEPALIVE = 15.0
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]

Emit = Callable[[TaskInfo], Awaitable[None]]
Control = Callable[[str, dict[str, Any]], Awaitable[None]]
Events = Callable[[Emit, Control], Awaitable[None]]


class EventStreams:
    """Serves event streams, at most ``max_streams`` at once (503 beyond)."""

    def __init__(self, max_streams: int, tracebacks: bool, max_pending: int = 10_000) -> None:
        self._max_streams = max_streams
        self._max_pending = max_pending
        self._tracebacks = tracebacks
        self._open = 0

    async def one(self, tm: TaskManager, task_id: str, receive: Receive, send: Send, *, head: bool = False) -> None:
        """Stream one task's snapshots until it ends.

        **Cancellation:** Ends the response; the task is not affected.
        """
        try:
            # Looked up first, as every route does: with a store, a task another process
            # submitted an instant ago is read from the file instead of being "not found".
            await tm.status(task_id)
            watcher = tm.watch(task_id)
        except KeyError:
            raise HTTPError(404, f"Task not found: {task_id}") from None

        async def events(emit: Emit, control: Control) -> None:
            async for info in watcher:
                await emit(info)

        await self._sse(events, receive, send, head)

    async def all(self, tm: TaskManager, receive: Receive, send: Send, *, head: bool = False) -> None:
        """Stream every task's changes until the manager shuts down.

        The stream subscribes first and then sends ``event: hello``: a client
        that (re)loads its listing after the hello misses no change. Changes
        are coalesced per task (newest wins). If the client reads so slowly
        that the server had to drop changes, it sends ``event: resync``
        (the client reloads its listing) instead of losing them silently.

        **Cancellation:** Ends the response; no task is affected.
        """

        async def events(emit: Emit, control: Control) -> None:
            async with tm.open_change_stream(max_pending=self._max_pending) as changes:
                await control("hello", {})
                dropped = 0
                async for info in changes:
                    if changes.dropped != dropped:
                        dropped = changes.dropped
                        await control("resync", {"dropped": dropped})
                    await emit(info)

        await self._sse(events, receive, send, head)

    async def _sse(self, events: Events, receive: Receive, send: Send, head: bool) -> None:
        if self._open >= self._max_streams:
            raise HTTPError(
                503,
                f"too many open event streams (max_streams={self._max_streams}); retry later",
                [(b"retry-after", b"5")],
            )
        if head:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            await send({"type": "http.response.body", "body": b""})
            return
        self._open += 1
        try:
            await self._sse_open(events, receive, send)
        finally:
            self._open -= 1

    async def _sse_open(self, events: Events, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})

        async def control(kind: str, data: dict[str, Any]) -> None:
            body = f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})

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
            await events(emit, control)
            await send({"type": "http.response.body", "body": b"event: end\ndata: {}\n\n", "more_body": False})
            nursery.cancel_scope.cancel()
