"""Jobs for the store tests of groups, retries and map: importable in every process on the store."""

from __future__ import annotations

import os
import time
from pathlib import Path

from genro_tasks_worker import report_progress


def pid_and_double(n: int) -> tuple[int, int]:
    return os.getpid(), 2 * n


def fail_until(counter: str, failures: int) -> int:
    """Count the calls in a file; raise for the first ``failures`` ones, then return the call's number."""
    path = Path(counter)
    calls = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(calls))
    if calls <= failures:
        raise ValueError(f"call {calls} fails")
    return calls


def half_then_sleep(seconds: float) -> None:
    report_progress(0.5, "half way")
    time.sleep(seconds)
