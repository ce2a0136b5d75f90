"""The README's graceful shutdown example, stopped by a real SIGTERM and by a real SIGINT."""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

EXAMPLE = Path(__file__).parent.parent / "examples" / "graceful_shutdown.py"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_graceful_shutdown_example(signum: signal.Signals) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            # A 3 s deadline: the short job (0.4 s, already running) finishes well within it.
            command = [sys.executable, str(EXAMPLE), "3"]
            run = functools.partial(trio.run_process, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
            proc: trio.Process = await nursery.start(run, command)
            assert proc.stdout is not None
            assert proc.stderr is not None
            out = b""
            while b"jobs running" not in out:
                chunk = await proc.stdout.receive_some()
                assert chunk, out
                out += chunk
            proc.send_signal(signum)
            async for chunk in proc.stdout:
                out += chunk
            err = b"".join([chunk async for chunk in proc.stderr])
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert f"{signum.name}: shutting down" in text
    assert "short: completed (finished)" in text
    assert "long: cancelled (cancelled by shutdown)" in text
    assert "queued: cancelled (cancelled by shutdown)" in text
