"""The README's main job, `python -m genro_tasks demo`, run as CI would: no terminal."""

from __future__ import annotations

import subprocess
import sys

import trio


async def test_demo_runs_non_interactively() -> None:
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-m", "genro_tasks", "demo"],
            capture_stdout=True,
            capture_stderr=True,
            stdin=subprocess.DEVNULL,
        )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "\x1b[" not in out  # plain lines when stdout is not a terminal
    assert "PENDING" in out  # queued jobs are visibly pending
    assert "reindex-search    CANCELLED" in out
    assert "WorkerCrashed" in out
    assert "SIGSEGV" in out
    assert "TaskTimeout" in out
    assert "1 cancelled, 5 completed, 2 failed" in out
