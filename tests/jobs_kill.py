"""Jobs that attack their own worker, for the kill-path tests (tests/test_attack_kill.py)."""

from __future__ import annotations

import os
import sys

from jobs_pipeline import DiscardingStream


class _RaisingStream(DiscardingStream):
    """A ``sys.stdout`` that cannot say whether it is closed (``closed`` raises)."""

    @property
    def closed(self) -> bool:
        raise RuntimeError("this stream cannot say whether it is closed")


class _ExitingStream(_RaisingStream):
    """A ``sys.stdout`` whose ``flush()`` raises SystemExit (a BaseException)."""

    def flush(self) -> None:
        raise SystemExit("flush() ends the process")

    @property
    def closed(self) -> bool:
        return False


def leave_hostile_stdout(kind: str) -> int:
    """Replace ``sys.stdout`` with a hostile stream (``"closed-raises"`` or ``"flush-exits"``); return the pid."""
    sys.stdout = _RaisingStream() if kind == "closed-raises" else _ExitingStream()
    return os.getpid()


def leave_a_child_then_exit(path: str, code: int) -> None:
    """Fork a child that ignores SIGTERM and sleeps for an hour, write its pid to ``path``, end the worker."""
    import signal
    import time

    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)
        os._exit(0)
    with open(path, "w") as f:
        f.write(str(child))
    os._exit(code)


def stop_then_return_bytes(marker: str, size: int) -> bytes:
    """Build ``size`` bytes, touch ``marker``, stop this worker (SIGSTOP), then return them once continued."""
    import signal
    from pathlib import Path

    data = b"r" * size
    Path(marker).touch()
    os.kill(os.getpid(), signal.SIGSTOP)
    return data


def _raise_tick(signum: int, frame: object) -> None:
    raise RuntimeError("a tick of the timer the job left running")


def leave_a_ticking_timer(size: int) -> bytes:
    """Leave a 1 ms repeating SIGALRM timer whose handler raises, and return ``size`` bytes.

    Pickling and sending a large result take milliseconds: the timer ticks while the worker's own
    code handles it, unless the job's timer ends with the job.
    """
    import signal

    data = b"t" * size
    signal.signal(signal.SIGALRM, _raise_tick)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    return data
