"""The shared store's retention and its cheap paths: what the file and every mirror keep.

Real worker processes and real SQLite files; a second manager (``max_workers=0``)
on the same file reads it the way another process of the application would.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import trio

import jobs_store
from genro_tasks import TaskManager, TaskStatus, testing


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
