"""Jobs for ``python -m genro_tasks demo`` (stdlib only, so demo workers stay trio-free).

Each one pretends to be a realistic background job and reports progress.
"""

from __future__ import annotations

import ctypes
import math
import time

from ._progress import report_progress


def _steps(total: int, seconds: float, label: str) -> None:
    for i in range(1, total + 1):
        time.sleep(seconds / total)
        report_progress(i / total, f"{label} {i}/{total}")


def export_report(rows: int, seconds: float) -> str:
    """Write a CSV report of ``rows`` rows."""
    _steps(20, seconds, f"exported rows x{rows // 20}:")
    return f"report-{rows}-rows.csv"


def resize_images(count: int, seconds: float) -> int:
    _steps(count, seconds, "resized image")
    return count


def reindex_search(documents: int, seconds: float) -> int:
    """A long job the demo cancels half way: its worker is killed."""
    _steps(40, seconds, f"indexed batch of {documents // 40} docs:")
    return documents


def train_model(epochs: int, seconds: float) -> float:
    loss = 1.0
    for epoch in range(1, epochs + 1):
        time.sleep(seconds / epochs)
        loss *= 0.7
        report_progress(epoch / epochs, f"epoch {epoch}/{epochs} loss={loss:.3f}")
    return round(loss, 4)


def native_plugin(seconds: float) -> None:
    """Gets 60% of the way, then a buggy C extension dereferences NULL: the worker dies."""
    for i in range(1, 7):
        time.sleep(seconds / 10)
        report_progress(i / 10, f"calling native plugin, step {i}/10")
    time.sleep(0.1)  # let the last progress report leave the worker
    ctypes.string_at(0)  # segfault


def sync_mailbox(seconds: float) -> int:
    """A sync that hangs on a slow server: it hits its timeout."""
    report_progress(0.05, "connecting to mail server")
    time.sleep(seconds)
    return 0


def crunch_numbers(limit: int) -> int:
    """Count primes below ``limit`` (CPU-bound), reporting as it goes."""
    count = 0
    step = max(1, limit // 50)
    for n in range(2, limit):
        if all(n % d for d in range(2, math.isqrt(n) + 1)):
            count += 1
        if n % step == 0:
            report_progress(n / limit, f"{count} primes below {n}")
    report_progress(1.0, f"{count} primes below {limit}")
    return count


def build_thumbnails(count: int, seconds: float) -> int:
    _steps(count, seconds, "thumbnail")
    return count
