"""Jobs of the hostile-disk store tests (tests/test_store_disk.py): importable by every worker."""

from __future__ import annotations

import os
import time


def wait_for_file(path: str, value: int) -> int:
    """Return ``value`` once ``path`` exists (the test creates it when the job should end)."""
    while not os.path.exists(path):
        time.sleep(0.01)
    return value


def length(data: bytes) -> int:
    return len(data)


def big(n: int) -> bytes:
    return b"x" * n
