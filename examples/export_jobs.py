"""The export job of the example app (runs in worker processes; stdlib only)."""

from __future__ import annotations

import csv
import os
import random
import tempfile
import time

from genro_tasks_worker import report_progress


def generate_report(user_id: int, rows: int = 200, seconds: float = 6.0) -> str:
    """Write a CSV report for ``user_id``, reporting progress; return its path."""
    rng = random.Random(user_id)
    fd, path = tempfile.mkstemp(prefix=f"report-{user_id}-", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["row", "user", "amount"])
            for i in range(rows):
                writer.writerow([i, user_id, round(rng.uniform(1, 500), 2)])
                if i % 10 == 9:
                    time.sleep(seconds * 10 / rows)
                    report_progress((i + 1) / rows, f"exported {i + 1}/{rows} rows")
    except BaseException:
        os.remove(path)  # cancelled or failed: no half-written report stays behind
        raise
    return path
