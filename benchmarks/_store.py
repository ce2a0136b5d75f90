"""genro_tasks on the shared SQLite store: its pool adapter and the cross-process cancel.

The store file lives in the measurement's own temporary directory (a fresh file per
measurement). Cross-process cancel: a second process (``store_runner.py``) runs the jobs
on its workers; this process, a client-only manager on the same file, cancels each one
and times ``cancel()`` until it returns True (the job's worker is dead and CANCELLED is
recorded in the file).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

import bench_jobs
from _common import Numbers, Params, Pool, PoolOpener, now
from _genro import open_genro, wait_status
from genro_tasks import TaskManager, TaskStatus

RUNNER = str(Path(__file__).with_name("store_runner.py"))
#: Cancels timed per measurement (the median is reported).
CANCELS = 15


def store_opener(tmpdir: Path) -> PoolOpener:
    """A pool adapter opening genro_tasks on a new store file under ``tmpdir``."""

    @asynccontextmanager
    async def open_store(workers: int, **options: Any) -> AsyncIterator[Pool]:
        async with open_genro(workers, store=tmpdir / "tasks.db", **options) as pool:
            yield pool

    return open_store


async def cross_process_cancel(p: Params) -> Numbers:
    db = p.tmpdir / "tasks.db"
    proc = await trio.lowlevel.open_process(
        [sys.executable, RUNNER, str(db), str(p.workers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        with trio.fail_after(60):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(100)
                if not chunk:
                    raise RuntimeError("the store runner ended before it was ready")
                line += chunk
        times = []
        async with TaskManager(max_workers=0, store=db) as tm:
            for _ in range(CANCELS):
                task_id = tm.submit(bench_jobs.sleep, 3600)
                await wait_status(tm, task_id, TaskStatus.RUNNING)
                t0 = now()
                cancelled = await tm.cancel(task_id)
                t1 = now()
                if not cancelled:
                    raise RuntimeError("cancel() returned False")
                times.append((t1 - t0) * 1e3)
        return {"cancel_ms": statistics.median(times)}
    finally:
        with trio.CancelScope(shield=True):
            if proc.stdin is not None:
                await proc.stdin.aclose()
            with trio.move_on_after(30):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
