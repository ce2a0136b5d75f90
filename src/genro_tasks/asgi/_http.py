"""Plain-ASGI plumbing shared by the API modules: types, errors, parameters, responses."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class HTTPError(Exception):
    """An error answered as ``{"error": message}`` with ``status`` (and extra ``headers``)."""

    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def check_method(method: str, allowed: str) -> None:
    """405 with an ``Allow`` header unless ``method`` is allowed (``"GET"`` also allows ``HEAD``)."""
    methods = ("GET", "HEAD") if allowed == "GET" else (allowed,)
    if method not in methods:
        raise HTTPError(405, f"use {allowed}", [(b"allow", ", ".join(methods).encode())])


def head_only(send: Send) -> Send:
    """Wrap ``send`` for a HEAD request: the headers go out, the body does not."""

    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_head


def query_params(scope: Scope) -> dict[str, list[str]]:
    """The query string's parameters (one value each), else 400 naming a repeated one.

    A parameter given twice (``?id=a&id=b``) is refused rather than read one way
    here and another way by a proxy or an authorisation layer in front.
    """
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    for name, values in query.items():
        if len(values) > 1:
            raise HTTPError(400, f"parameter {name!r} is given {len(values)} times: give it once")
    return query


def int_param(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``, else 400."""
    if name not in query:
        return default
    try:
        value = int(query[name][0])
    except ValueError:
        raise HTTPError(400, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise HTTPError(400, f"{name} must be between {low} and {high}")
    return value


async def send_body(
    send: Send, status: int, body: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a complete response."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send ``payload`` as a JSON response."""
    await send_body(send, status, json.dumps(payload).encode(), b"application/json", headers)
