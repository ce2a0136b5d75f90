"""The dashboard: its page and script (package data), the headers that keep
it from being framed or injected, and the status palette it draws with."""

from __future__ import annotations

from importlib import resources
from typing import Any

from .._task import TaskStatus
from ._http import Send

#: The colour of each status on the dashboard. A new TaskStatus needs an entry
#: here (a test checks that every status has one); its rank and whether it is
#: final come from TaskStatus itself.
STATUS_COLOURS: dict[TaskStatus, str] = {
    TaskStatus.PENDING: "#8e8e93",
    TaskStatus.RUNNING: "#0a84ff",
    TaskStatus.COMPLETED: "#2e9d49",
    TaskStatus.FAILED: "#d93025",
    TaskStatus.CANCELLED: "#c77700",
}

_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; "
    b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_FILES: dict[str, bytes] = {}


def status_table() -> list[dict[str, Any]]:
    """Every status in order, with its rank (statuses only move up), finality and colour.

    Live statuses rank in declaration order; every final status shares the top rank.
    """
    live = [s for s in TaskStatus if not s.is_terminal]
    top = len(live)
    return [
        {
            "name": s.value,
            "rank": top if s.is_terminal else live.index(s),
            "terminal": s.is_terminal,
            "colour": STATUS_COLOURS.get(s, "#6e6e73"),
        }
        for s in TaskStatus
    ]


def _file(name: str) -> bytes:
    data = _FILES.get(name)
    if data is None:
        data = _FILES[name] = resources.files("genro_tasks.asgi").joinpath(name).read_bytes()
    return data


async def send_page(send: Send) -> None:
    """Send the dashboard page: no inline script, not frameable."""
    await _send_static(send, _file("dashboard.html"), b"text/html; charset=utf-8")


async def send_script(send: Send) -> None:
    """Send the dashboard's script."""
    await _send_static(send, _file("dashboard.js"), b"text/javascript; charset=utf-8")


async def _send_static(send: Send, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
                (b"x-frame-options", b"DENY"),
                (b"referrer-policy", b"no-referrer"),
                (b"content-security-policy", _CSP),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
