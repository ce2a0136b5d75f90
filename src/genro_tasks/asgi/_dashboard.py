"""The dashboard page, served from package data."""

from __future__ import annotations

from importlib import resources

from ._http import Send

_PAGE: bytes | None = None


def dashboard_html() -> bytes:
    """The dashboard page (read once from package data)."""
    global _PAGE
    if _PAGE is None:
        _PAGE = resources.files("genro_tasks.asgi").joinpath("dashboard.html").read_bytes()
    return _PAGE


async def send_html(send: Send, page: bytes) -> None:
    """Send the dashboard page with its security headers."""
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
