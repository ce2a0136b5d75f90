"""What the browser tests share: a real hypercorn server on 127.0.0.1 and Debian's Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

HERE = Path(__file__).parent
#: Debian's Chromium, if installed (.ci/run installs it).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Headless flags for this machine: no sandbox as root, no background network traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve(app: str, **env: str) -> Iterator[str]:
    """Run hypercorn serving ``app`` (``module:attribute`` under tests/); yield its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "--worker-class", "trio", "--bind", f"127.0.0.1:{port}", app],
        cwd=HERE,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:  # blocks until hypercorn says it is listening
            if b"Running on" in line:
                break
        else:
            pytest.fail("hypercorn exited before it was ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
