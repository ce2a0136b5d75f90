"""Jobs for the store tests: importable by name in every process that opens the store."""

from __future__ import annotations

import os
import time

from genro_tasks_worker import report_progress


def double(n: int) -> int:
    return 2 * n


def where() -> int:
    """The pid of the worker that ran the job."""
    return os.getpid()


def announce_and_sleep(seconds: float = 3600) -> None:
    report_progress(0.5, f"pid={os.getpid()}")
    time.sleep(seconds)


def big(n: int) -> bytes:
    return b"x" * n


def fail(message: str) -> None:
    raise ValueError(message)


def flood(n: int) -> int:
    for i in range(n):
        report_progress(i / n, None)
    return n


def short(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def stop_when_asked() -> str:
    from genro_tasks_worker import CancelRequested

    report_progress(None, "waiting")
    try:
        time.sleep(3600)
    except CancelRequested:
        raise
    return "not asked"
