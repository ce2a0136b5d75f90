"""Crash safety of the store, proven: SIGKILL the whole application at random points under load.

After every kill the file must pass ``PRAGMA integrity_check``, every task
acknowledged as durable (``await tm.flush()`` returned after its submit) must
be there, each in exactly one consistent state, none stuck RUNNING once the
store is opened again, and every PENDING one must then run.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from genro_tasks import TaskManager, TaskStatus

APP = str(Path(__file__).with_name("store_app.py"))


async def run_and_kill(db: Path, after: float) -> list[str]:
    """Run the load app for ``after`` seconds past its first durable batch, SIGKILL it; return the durable ids."""
    proc = await trio.lowlevel.open_process([sys.executable, APP, "load", str(db)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    acknowledged: list[str] = []
    buffer = b""
    try:
        with trio.fail_after(60):
            while not acknowledged:  # wait for the app to be up and loaded
                chunk = await proc.stdout.receive_some()
                assert chunk, "the load app ended"
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    acknowledged.extend(line.decode().split()[1:])
        with trio.move_on_after(after):
            while True:
                chunk = await proc.stdout.receive_some()
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    acknowledged.extend(line.decode().split()[1:])
    finally:
        proc.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await proc.wait()
    # Whole lines still in the pipe were printed, so acknowledged, before the kill.
    with trio.move_on_after(5):
        while chunk := await proc.stdout.receive_some():
            buffer += chunk
    *lines, _partial = buffer.split(b"\n")
    for line in lines:
        acknowledged.extend(line.decode().split()[1:])
    return acknowledged


def check_file(db: Path, acknowledged: set[str]) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = dict(conn.execute("SELECT id, status FROM tasks").fetchall())
        missing = acknowledged - rows.keys()
        assert not missing, f"{len(missing)} tasks acknowledged as durable are missing"
        assert set(rows.values()) <= {s.value for s in TaskStatus}
        jobs = {r[0] for r in conn.execute("SELECT id FROM tasks WHERE payload IS NOT NULL")}
        results = {r[0] for r in conn.execute("SELECT id FROM tasks JOIN results USING (n)")}
        for tid, status in rows.items():
            if status == "pending":
                assert tid in jobs, f"queued task {tid} lost its job"
            elif status == "completed":
                assert tid in results, f"completed task {tid} has no result"
                assert tid not in jobs
            elif status != "running":
                assert tid not in jobs


async def crash_loop(db: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    acknowledged: set[str] = set()
    for _ in range(kills):
        acknowledged.update(await run_and_kill(db, rng.uniform(0.0, 0.4)))
        check_file(db, acknowledged)
    assert len(acknowledged) > kills
    # Recovery: opening the store notices that every owner is dead.
    async with TaskManager(max_workers=0, store=db, max_finished=10_000_000) as client:
        running = client.list_tasks(TaskStatus.RUNNING)
        assert not running, [(i.task_id, i.started_at, i.worker_pid) for i in running]
        lost = [i for i in client.list_tasks(TaskStatus.FAILED) if i.error and i.error.startswith("TaskLost: ")]
        assert all(i.started_at is not None for i in lost)
        ids = {i.task_id for i in client.list_tasks()}
        assert acknowledged <= ids
    # And what was queued runs now.
    async with TaskManager(max_workers=2, store=db, max_finished=10_000_000) as tm:
        # Not finished yet: queued, or already started by this manager's workers since it opened.
        pending = [i.task_id for i in tm.list_tasks() if not i.status.is_terminal]
        with trio.fail_after(120):
            for tid in pending:
                await tm.result(tid)
        left = tm.list_tasks(TaskStatus.PENDING) + tm.list_tasks(TaskStatus.RUNNING)
        assert not left, [(i.task_id, i.status, i.task_id in pending) for i in left]
    check_file(db, acknowledged)


async def test_sigkill_under_load_a_few_times(tmp_path: Path) -> None:
    await crash_loop(tmp_path / "tasks.db", kills=3, seed=1)


@pytest.mark.slow
async def test_sigkill_under_load_many_times(tmp_path: Path) -> None:
    await crash_loop(tmp_path / "tasks.db", kills=25, seed=2)
