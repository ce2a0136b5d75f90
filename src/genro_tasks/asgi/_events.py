"""Server-Sent Events: one task's snapshots, or every task's changes."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import trio

from .._manager import TaskManager
from .._task import TaskInfo
from ._http import HTTPError, Receive, Send
from ._serialize import info_to_json

_KEEPALIVE = 15.0

Emit = Callable[[TaskInfo], Awaitable[None]]


class EventStreams:
    """Serves event streams, at most ``max_streams`` at once (503 beyond)."""

    def __init__(self, max_streams: int, tracebacks: bool) -> None:
        self._max_streams = max_streams
        self._tracebacks = tracebacks
        self._open = 0

    async def one(self, tm: TaskManager, task_id: str, receive: Receive, send: Send) -> None:
        """Stream one task's snapshots until it ends.

        **Cancellation:** Ends the response; the task is not affected.
        """
        try:
            watcher = tm.watch(task_id)
        except KeyError:
            raise HTTPError(404, f"Task not found: {task_id}") from None

        async def events(emit: Emit) -> None:
            async for info in watcher:
                await emit(info)

        await self._sse(events, receive, send)

    async def all(self, tm: TaskManager, receive: Receive, send: Send) -> None:
        """Stream every task's changes until the manager shuts down.

        **Cancellation:** Ends the response; no task is affected.
        """

        async def events(emit: Emit) -> None:
            async with tm.open_change_stream(max_pending=2_000) as changes:
                async for info in changes:
                    await emit(info)

        await self._sse(events, receive, send)

    async def _sse(self, events: Callable[[Emit], Awaitable[None]], receive: Receive, send: Send) -> None:
        if self._open >= self._max_streams:
            raise HTTPError(503, f"too many open event streams (max_streams={self._max_streams}); retry later")
        self._open += 1
        try:
            await self._sse_open(events, receive, send)
        finally:
            self._open -= 1

    async def _sse_open(self, events: Callable[[Emit], Awaitable[None]], receive: Receive, send: Send) -> None:
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
