"""The export job of the example app (runs in worker processes; stdlib only)."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import tempfile
import time
from pathlib import Path

from genro_tasks_worker import report_progress

_PART = ".csv.part"


def report_dir() -> Path:
    """Where reports go: $EXPORT_REPORT_DIR, else <tmp>/genro-exports."""
    return Path(os.environ.get("EXPORT_REPORT_DIR") or Path(tempfile.gettempdir()) / "genro-exports")


def clean_stale_parts(directory: Path) -> int:
    """Delete partial reports whose writer process is gone (a hard-killed export); return how many."""
    removed = 0
    if not directory.is_dir():
        return 0
    for part in directory.glob(f"*{_PART}"):
        try:
            pid = int(part.name.split(".")[-3])
            os.kill(pid, 0)
            continue  # its writer still runs
        except (ValueError, IndexError):
            pass  # not ours to judge by pid: a name we did not write; remove it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # the pid exists (another user's process)
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
            removed += 1
    return removed


def generate_report(user_id: int, rows: int = 200, seconds: float = 6.0, directory: str | None = None) -> str:
    """Write a CSV report for ``user_id``, reporting progress; return its path.

    The report is written to ``<name>.<pid>.csv.part`` and renamed into place
    atomically when complete, so a report path only ever names a whole report,
    even if the worker is hard-killed mid-write (the partial file is then
    removed by the next export, or when the app starts).
    """
    folder = Path(directory) if directory is not None else report_dir()
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_parts(folder)
    rng = random.Random(user_id)
    fd, part = tempfile.mkstemp(prefix=f"report-{user_id}-", suffix=f".{os.getpid()}{_PART}", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["row", "user", "amount"])
            for i in range(rows):
                writer.writerow([i, user_id, round(rng.uniform(1, 500), 2)])
                if i % 10 == 9:
                    f.flush()
                    time.sleep(seconds * 10 / rows)
                    report_progress((i + 1) / rows, f"exported {i + 1}/{rows} rows")
            f.flush()
            os.fsync(f.fileno())
        final = part.removesuffix(f".{os.getpid()}{_PART}") + ".csv"
        os.replace(part, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)  # cancelled gracefully or failed: no partial report stays behind
        raise
    return final
