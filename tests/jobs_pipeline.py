"""Jobs for the pipelining tests: each leaves a trace of having started, or waits for a file."""

from __future__ import annotations

import os
import time
from pathlib import Path


def wait_for_file(path: str, limit: float = 60.0) -> int:
    """Block until ``path`` exists (or ``limit`` seconds passed); return this worker's pid."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.getpid()


def exit_when_file(path: str, code: int) -> None:
    """Block until ``path`` exists, then end the worker process abruptly."""
    wait_for_file(path)
    os._exit(code)


def mark_started(path: str) -> int:
    """Append this worker's pid to ``path`` (a job that ran leaves a line); return the pid."""
    with Path(path).open("a") as f:
        f.write(f"{os.getpid()}\n")
    return os.getpid()


def mark_then_wait(path: str, release: str) -> int:
    """:func:`mark_started`, then :func:`wait_for_file` on ``release``."""
    mark_started(path)
    return wait_for_file(release)


def sleep_then_pid(seconds: float) -> int:
    """Sleep ``seconds`` (a job that is not quick); return this worker's pid."""
    time.sleep(seconds)
    return os.getpid()


def ignore_sigterm_then_pid() -> int:
    """Ignore SIGTERM (a job changing the worker's signal handling) and return at once; return the pid."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return os.getpid()


def wait_unless_asked(path: str) -> str:
    """Wait for ``path``; a graceful cancel (CancelRequested) ends the wait by raising."""
    wait_for_file(path)
    return "not asked"


def fork_a_lingering_child() -> int:
    """Fork a child that would outlive the job (sleeps an hour); return the child's pid."""
    child = os.fork()
    if child == 0:
        time.sleep(3600)
        os._exit(0)
    return child


def report_then_return(message: str) -> int:
    """Report progress as the very last thing the job does; return the pid."""
    from genro_tasks_worker import report_progress

    report_progress(0.5, message)
    report_progress(1.0, message)  # within the coalescing interval: still pending when the job ends
    return os.getpid()


class DiscardingStream:
    """A ``sys.stdout`` replacement that drops what is written; subclasses make it hostile."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class _StopOnInspection(DiscardingStream):
    """A ``sys.stdout`` that stops its worker (SIGSTOP) when asked whether it is closed.

    The worker asks in its clean-up after the job: after the job's Done left, before it takes the
    ticket of the job it holds next.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker

    @property
    def closed(self) -> bool:
        import signal

        Path(self.marker).touch()
        os.kill(os.getpid(), signal.SIGSTOP)
        return False


def stop_in_clean_up_after(base: str) -> int:
    """Wait for ``base + ".release"``, then return; the worker stops itself in the clean-up that follows.

    It touches ``base + ".stopped"`` just before it stops.
    """
    import sys

    wait_for_file(base + ".release")
    sys.stdout = _StopOnInspection(base + ".stopped")
    return os.getpid()
