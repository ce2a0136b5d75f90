"""Jobs that attack their own worker, for the kill-path tests (tests/test_attack_kill.py)."""

from __future__ import annotations

import os
import sys


class _RaisingStream:
    """A ``sys.stdout`` that cannot say whether it is closed (``closed`` raises)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

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
