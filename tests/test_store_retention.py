"""The shared store's retention and its cheap paths: what the file and every mirror keep.

Real worker processes and real SQLite files; a second manager (``max_workers=0``)
on the same file reads it the way another process of the application would.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import trio

import jobs_store
from genro_tasks import SQLiteStore, TaskManager, TaskStatus, testing


def _rows(db: Path) -> tuple[int, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
        results = conn.execute("SELECT count(*) FROM results").fetchone()[0]
    return int(tasks), int(results)


async def test_max_finished_keeps_the_newest_in_the_file_and_in_every_mirror(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with (
        TaskManager(max_workers=2, store=db, max_finished=5) as tm,
        TaskManager(max_workers=0, store=db, max_finished=5) as client,
    ):
        ids = []
        with trio.fail_after(60):
            for i in range(12):  # one after the other: they finish in this order
                ids.append(tm.submit(jobs_store.double, i))
                assert await tm.result(ids[-1]) == 2 * i
            await tm.flush()
            # The process that pruned forgets the same tasks as the file (its own tombstones).
            await testing.wait_until(tm, lambda: {info.task_id for info in tm.list_tasks()} == set(ids[-5:]))
            await testing.wait_until(client, lambda: {info.task_id for info in client.list_tasks()} == set(ids[-5:]))
        assert _rows(db) == (5, 5)
        for tid, i in zip(ids[-5:], range(7, 12), strict=True):
            assert await tm.result(tid) == 2 * i
            assert await client.result(tid) == 2 * i
        for tid in ids[:-5]:
            assert tid not in {info.task_id for info in client.list_tasks()}


async def test_finished_ttl_forgets_old_tasks_in_the_file_and_in_every_mirror(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with (
        TaskManager(max_workers=2, store=db, finished_ttl=1.0) as tm,
        TaskManager(max_workers=0, store=db) as client,
    ):
        with trio.fail_after(60):
            ids = [tm.submit(jobs_store.double, i) for i in range(6)]
            for tid in ids:
                await tm.result(tid)
            await tm.flush()
            await testing.wait_until(client, lambda: len(client.list_tasks(TaskStatus.COMPLETED)) == 6)
            # Expired (once the next heartbeat prunes): gone from the file and from both mirrors.
            await testing.wait_until(tm, lambda: not tm.list_tasks())
            await testing.wait_until(client, lambda: not client.list_tasks())
        assert _rows(db) == (0, 0)


async def test_a_task_that_ends_within_one_group_commit_is_stored_whole(tmp_path: Path) -> None:
    """Inserted, started and finished in one transaction: written once, finished, with all it carries."""
    db = tmp_path / "tasks.db"
    slow = SQLiteStore(db, poll_interval=30.0)  # nothing is written until flush(): one group commit
    async with TaskManager(max_workers=2, store=slow) as tm:
        with trio.fail_after(60):
            ok = tm.submit(jobs_store.double, 21, metadata={"k": "v"})
            bad = tm.submit(jobs_store.fail, "boom")
            assert await tm.result(ok) == 42
            with pytest.raises(ValueError, match="boom"):
                await tm.result(bad)
            mine = {tid: await tm.info(tid) for tid in (ok, bad)}
            assert _rows(db) == (0, 0)  # still in memory: the group commit has not happened
            await tm.flush()
        with contextlib.closing(sqlite3.connect(db)) as conn:
            stored = dict(conn.execute("SELECT id, status FROM tasks WHERE payload IS NULL").fetchall())
        assert stored == {ok: "completed", bad: "failed"}
        async with TaskManager(max_workers=0, store=db) as client:
            with trio.fail_after(30):
                assert await client.result(ok) == 42
                with pytest.raises(ValueError, match="boom"):
                    await client.result(bad)
                for tid, info in mine.items():
                    other = await client.info(tid)
                    assert other.status is info.status
                    assert other.created_at == info.created_at
                    assert other.started_at == info.started_at is not None
                    assert other.completed_at == info.completed_at is not None
                    assert other.worker_pid == info.worker_pid is not None
                    assert other.error == info.error
                    assert other.metadata == info.metadata
                    assert other.traceback == info.traceback


async def test_a_process_alone_on_the_store_prunes_without_tombstones(tmp_path: Path) -> None:
    """Tombstones only serve other processes' mirrors: alone, retention writes none (and forgets the same)."""
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=2, store=db, max_finished=5) as tm:
        with trio.fail_after(60):
            ids = []
            for i in range(12):
                ids.append(tm.submit(jobs_store.double, i))
                assert await tm.result(ids[-1]) == 2 * i
            await tm.flush()
            await testing.wait_until(tm, lambda: {info.task_id for info in tm.list_tasks()} == set(ids[-5:]))
            await tm.flush()
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT count(*) FROM gone").fetchone()[0] == 0
        assert _rows(db) == (5, 5)
