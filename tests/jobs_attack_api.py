"""Jobs for tests/test_attack_api.py: importable by the workers."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def stop_then_raise_large(marker: str, size: int) -> None:
    """Build a ValueError carrying ``size`` bytes, touch ``marker``, stop this worker (SIGSTOP), then raise it."""
    error = ValueError(b"e" * size)
    Path(marker).touch()
    os.kill(os.getpid(), signal.SIGSTOP)
    raise error
