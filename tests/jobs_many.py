"""Jobs for the many-tasks tests (map, groups, retries): importable by the workers."""

from __future__ import annotations

import os
import time
from pathlib import Path

from genro_tasks import report_progress


def square(x: int) -> int:
    return x * x


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def first_quick(x: int) -> int:
    """Item 0 returns at once; every other item sleeps (until killed)."""
    if x != 0:
        time.sleep(3600)
    return x


def count_attempt(path: str) -> int:
    """Add one to the counter in ``path`` and return it (which attempt of this job this is)."""
    p = Path(path)
    n = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(n))
    return n


def flaky(path: str, failures: int, error: str = "ValueError") -> int:
    """Fail the first ``failures`` runs (with ``error``: "ValueError" or "KeyError"), then return the run number."""
    n = count_attempt(path)
    if n <= failures:
        raise {"ValueError": ValueError, "KeyError": KeyError}[error](f"run {n} fails")
    return n


def crash_first(path: str) -> int:
    """Kill the worker on the first run; return the run number after that."""
    n = count_attempt(path)
    if n == 1:
        os._exit(3)
    return n


def progress_then_sleep(fraction: float) -> None:
    report_progress(fraction, "halfway")
    time.sleep(3600)


def sleep_forever() -> None:
    time.sleep(3600)


def zero_one_then_sleep(x: int) -> int:
    """Item 0 returns, item 1 raises ValueError, every other item sleeps (until killed)."""
    if x == 1:
        raise ValueError("item 1 is bad")
    if x != 0:
        time.sleep(3600)
    return x


def sleep_after_first(path: str) -> int:
    """Return 1 on the first run; sleep (until killed) on every later one."""
    n = count_attempt(path)
    if n > 1:
        time.sleep(3600)
    return n
