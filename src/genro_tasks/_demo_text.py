"""Text helpers shared by the demo's views: what each column of a task row says.

Both views (rich's live table and the plain-text lines) show the same facts;
they differ only in how they draw them.
"""

from __future__ import annotations

import textwrap
import time

from ._task import TaskInfo, TaskStatus


def shorten(text: str, width: int, ellipsis: str = "…") -> str:
    """``text`` cut to at most ``width`` characters, at a word boundary when there is one.

    The cut is marked with ``ellipsis``. A single word longer than the space is
    cut inside (nothing else would fit), still marked.
    """
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    room = width - len(ellipsis)
    if room <= 0:
        return text[:width]
    head = text[: room + 1]
    cut = head.rfind(" ")
    if cut > room // 2:  # a word boundary not too far back: keep whole words
        return head[:cut].rstrip(" ,;:") + ellipsis
    return text[:room] + ellipsis


def percent(info: TaskInfo) -> str:
    """``" 40%"``: the last progress the job reported, or blank before any report."""
    if info.progress is None:
        return "  - "
    return f"{info.progress * 100:3.0f}%"


def elapsed(info: TaskInfo, now: float | None = None) -> str:
    """``"  4.2s"``: running time so far (or in all, once finished); ``"-"`` if it never started."""
    if info.started_at is None:
        return "-"
    start = info.started_at.timestamp()
    end = info.completed_at.timestamp() if info.completed_at else (time.time() if now is None else now)
    return f"{max(0.0, end - start):.1f}s"


def detail(info: TaskInfo) -> str:
    """What a row says after the numbers: the error once it failed or was cancelled, else the job's message."""
    if info.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) and info.error:
        return info.error
    return info.progress_message or ""


def wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken at spaces only (never at a hyphen).

    A single word longer than ``width`` is the only thing ever cut. Empty text gives one empty line.
    """
    return textwrap.wrap(text, max(1, width), break_on_hyphens=False) or [""]
