"""Groups, attempts and map with the shared store: stored, and seen the same from every process."""

from __future__ import annotations

from pathlib import Path

import trio

import jobs_store_many as jobs
from genro_tasks import TaskManager, TaskStatus, testing
from test_store import server


async def test_map_and_groups_run_in_another_process_and_are_seen_everywhere(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with server(db, workers=2) as other, TaskManager(max_workers=0, store=db) as tm:
        with trio.fail_after(60):
            mapped = [value async for value in tm.map(jobs.pid_and_double, range(40))]
        assert [value for _pid, value in mapped] == [2 * i for i in range(40)]
        runners = {pid for pid, _value in mapped}
        assert runners.isdisjoint({other.pid, 0})  # the other process's workers ran them (we have none)

        ids = [tm.options(group="batch").submit(jobs.pid_and_double, i) for i in range(10)]
        with trio.fail_after(60):
            values = await tm.gather(ids)
        assert [v for _pid, v in values] == [2 * i for i in range(10)]
        info = tm.group_info("batch")
        assert (info.total, info.completed, info.progress) == (10, 10, 1.0)
        assert {t.group for t in tm.list_tasks() if t.task_id in ids} == {"batch"}

    # A manager opened later (a restart) knows the group and its tasks from the file.
    async with TaskManager(max_workers=0, store=db) as later:
        again = later.group_info("batch")
        assert (again.total, again.completed) == (10, 10)
        assert (await later.info(ids[3])).group == "batch"


async def test_cancel_group_kills_tasks_running_in_another_process(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with server(db, workers=2), TaskManager(max_workers=0, store=db) as tm:
        ids = [tm.options(group="sleepy").submit(jobs.half_then_sleep, 3600) for _ in range(3)]
        with trio.fail_after(60):
            await testing.wait_until(tm, lambda: [t.progress for t in tm.list_tasks(TaskStatus.RUNNING)] == [0.5, 0.5])
            assert tm.group_info("sleepy").running == 2
            assert await tm.cancel_group("sleepy") == 3
        assert {(await tm.info(t)).status for t in ids} == {TaskStatus.CANCELLED}


async def test_retries_happen_where_the_task_runs_and_every_attempt_is_stored(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    counter = tmp_path / "calls"
    async with server(db, workers=1), TaskManager(max_workers=0, store=db) as tm:
        tid = tm.options(retries=3, retry_backoff=0.01).submit(jobs.fail_until, str(counter), 2)
        with trio.fail_after(60):
            assert await tm.result(tid) == 3
        info = await tm.info(tid)
        assert info.attempt == 3
        assert len(info.previous_errors) == 2
        assert all("ValueError" in e for e in info.previous_errors)

        # An operator requeues it: its next attempt goes to the shared queue; the other process runs it.
        await tm.requeue(tid)
        with trio.fail_after(60):
            await testing.wait_for_status(tm, tid, TaskStatus.COMPLETED)
            assert await tm.result(tid) == 4
        assert (await tm.info(tid)).attempt == 4

    async with TaskManager(max_workers=0, store=db) as later:
        stored = await later.info(tid)
        assert stored.attempt == 4
        assert stored.status is TaskStatus.COMPLETED
        assert stored.previous_errors[:2] == info.previous_errors
        assert stored.previous_errors[2].startswith("requeued after completed")
        assert await later.result(tid) == 4
