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
