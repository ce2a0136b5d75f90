"""Ctrl-C reaches the application as trio delivers it, whatever the
supervisor is doing, and the manager then shuts down as for any exception
inside ``async with``: running tasks killed and CANCELLED, queued ones
CANCELLED, nothing recorded as a supervisor failure."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import trio

HERE = Path(__file__).parent


async def _interrupt_once(delay: float) -> tuple[int, bytes, bytes]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(HERE / "sigint_app.py"), str(HERE)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    out = b""
    err = b""
    try:
        with trio.fail_after(60):
            while b"READY\n" not in out:
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, f"sigint_app.py exited early: {out!r}"
                out += chunk
        await trio.sleep(delay)  # a varying point in the load; correctness does not depend on it
        os.killpg(proc.pid, signal.SIGINT)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:

                async def read_err() -> None:
                    nonlocal err
                    assert proc.stderr is not None
                    while chunk := await proc.stderr.receive_some(65536):
                        err += chunk

                nursery.start_soon(read_err)
                while chunk := await proc.stdout.receive_some(65536):
                    out += chunk
                await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
        await proc.stdout.aclose()
        await proc.stderr.aclose()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_ctrl_c_under_load_is_never_swallowed() -> None:
    rng = random.Random(1234)
    for attempt in range(6):
        code, out, err = await _interrupt_once(rng.uniform(0.05, 0.4))
        assert code == 130, f"attempt {attempt}: exit {code}\nstdout: {out[-2000:]!r}\nstderr: {err[-4000:]!r}"
        report = json.loads(out.decode().strip().splitlines()[-1])
        assert report["running_after"] is False
        tasks = report["tasks"]
        assert tasks["long-running"][0] == "cancelled", tasks["long-running"]
        for task_id, (status, error) in tasks.items():
            assert status in ("completed", "cancelled"), (attempt, task_id, status, error)
        assert b"SupervisorFailed" not in err
        assert b"supervisor failed" not in err
