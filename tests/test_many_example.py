"""The README's "Running many jobs" example: run to the end, and stopped by a real SIGINT."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

EXAMPLE = Path(__file__).parent.parent / "examples" / "many_jobs.py"


async def _run(args: list[str], interrupt_after: bytes | None) -> tuple[int, str]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(EXAMPLE), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the SIGINT a terminal's Ctrl-C sends
    )
    assert proc.stdout is not None
    out = b""
    try:
        with trio.fail_after(60):
            if interrupt_after is not None:
                while not re.search(interrupt_after, out):
                    chunk = await proc.stdout.receive_some(65536)
                    assert chunk, out.decode()
                    out += chunk
                os.killpg(proc.pid, signal.SIGINT)
            while chunk := await proc.stdout.receive_some(65536):
                out += chunk
            await proc.wait()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await proc.wait()
        await proc.stdout.aclose()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.parametrize("plain", [True, False])
async def test_many_jobs_example_runs_to_the_end(plain: bool) -> None:
    code, out = await _run(["12", "--seconds", "0.02", *(["--plain"] if plain else [])], None)
    assert code == 0, out
    assert "done in" in out
    assert "completed 12, failed 0, cancelled 0, running 0, pending 0; sum 506" in out


async def test_many_jobs_example_ends_cleanly_on_ctrl_c() -> None:
    # Long items: some are running and some queued when the SIGINT arrives (a line shows 2 running).
    code, out = await _run(["400", "--seconds", "30", "--plain"], rb"\b2 running")
    assert code == 130, out
    assert "Traceback" not in out
    match = re.search(r"interrupted: completed (\d+), failed 0, cancelled (\d+), running 0, pending 0", out)
    assert match, out
    assert int(match.group(2)) > 0  # the running and queued items of the batch were killed
