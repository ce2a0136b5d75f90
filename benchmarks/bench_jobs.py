"""Job functions shared by every library in the benchmark (stdlib only).

Workers import this module by name, so it must stay importable from the
``benchmarks`` directory (each measurement puts that directory on sys.path,
and every library hands its sys.path to its workers).
"""

from __future__ import annotations

import os
import time

from genro_tasks_worker import report_progress


def double(n: int) -> int:
    """The trivial job."""
    return n * 2


def echo(value: bytes) -> bytes:
    """Return the argument unchanged (the big-payload round trip)."""
    return value


def sleep(seconds: float) -> float:
    """A slow job (status truth)."""
    time.sleep(seconds)
    return seconds


def sleep_marked(marker: str, seconds: float) -> float:
    """Create ``marker`` (holding the worker's pid) as soon as the job runs, then sleep."""
    tmp = f"{marker}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, marker)  # atomic: the parent never reads a half-written pid
    time.sleep(seconds)
    return seconds


def progress_flood(n: int) -> int:
    """A tight loop calling report_progress ``n`` times."""
    for i in range(n):
        report_progress(i / n, "msg")
    return n


def plain_loop(n: int) -> int:
    """The same loop as :func:`progress_flood` without the call."""
    x = 0.0
    for i in range(n):
        x = i / n
    return n if x >= 0 else 0


def report_time_then_sleep(seconds: float) -> None:
    """Report the wall clock (``time.time()``) as the progress message, then sleep."""
    report_progress(0.5, repr(time.time()))
    time.sleep(seconds)
