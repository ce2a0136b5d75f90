"""Jobs for tests/test_store_attack.py: importable in every process on the store."""

from __future__ import annotations

import os


def append_pid(path: str, tag: str) -> str:
    """Append one line (this worker's pid and ``tag``) to ``path``: one line per call, from any process."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {tag}\n".encode())
    finally:
        os.close(fd)
    return tag


def ignore_graceful_cancel() -> None:
    """Run until killed: a graceful cancel is acknowledged (progress 0.5) and ignored."""
    import time

    from genro_tasks_worker import CancelRequested, report_progress

    report_progress(0.1, "running")
    while True:
        try:
            time.sleep(3600)
        except CancelRequested:
            report_progress(0.5, "asked to stop; going on")


def fail_on_undecodable_name() -> None:
    """Raise with a file name that is not UTF-8 (decoded as Python does: lone surrogates)."""
    raise FileNotFoundError(os.fsdecode(b"/data/caf\xe9.csv"))


def progress_on_undecodable_name() -> None:
    """Report progress naming a file that is not UTF-8, then run until cancelled."""
    import time

    from genro_tasks_worker import report_progress

    report_progress(0.5, os.fsdecode(b"reading caf\xe9.csv"))
    time.sleep(3600)


def count_then_wait(path: str, gate: str) -> int:
    """Append a line to ``path``; from the second call on, report progress 0.5 and wait until ``gate`` exists.

    Returns the call's number.
    """
    import time

    from genro_tasks_worker import report_progress

    append_pid(path, "call")
    with open(path) as f:
        calls = len(f.read().splitlines())
    if calls >= 2:
        report_progress(0.5, "waiting for the gate")
    while calls >= 2 and not os.path.exists(gate):
        time.sleep(0.01)
    return calls
