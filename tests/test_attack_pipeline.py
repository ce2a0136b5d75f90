"""Attacks on pipelining: jobs a busy worker holds behind the one it runs, with real worker processes.

Each test waits on states and events (never on a lucky sleep) and bounds every wait with
``trio.fail_after``.
"""

from __future__ import annotations

from pathlib import Path

import trio

from conftest import wait_status, wait_until
from genro_tasks import TaskManager, TaskStatus, testing
from genro_tasks._process_backend import HELD_AHEAD, HELD_BUDGET
from jobs_pipeline import sleep_then_pid, wait_for_file


async def _long_job_after_a_quick_one(tm: TaskManager, release: Path) -> tuple[str, int]:
    """Run a quick job on the only worker (it may then hold many jobs), then a long one; return its id and pid."""
    with trio.fail_after(20):
        await tm.run(sleep_then_pid, 0)  # imports the module: not quick
        await tm.run(sleep_then_pid, 0)
    long = tm.submit(wait_for_file, str(release))
    await wait_status(tm, long, TaskStatus.RUNNING)
    pid = (await tm.info(long)).worker_pid
    assert pid is not None
    return long, pid


async def test_an_urgent_task_does_not_wait_behind_many_held_jobs_that_turned_out_slow(tmp_path: Path) -> None:
    """The worker's last job was quick, so it takes many jobs to hold behind a long one; they are not quick.

    Once the long job has ended (the worker's last job is now a slow one), the worker must not
    run all of them before a more urgent task submitted meanwhile: it holds one job at most.
    """
    release = tmp_path / "release"
    async with TaskManager(1) as tm:
        _long, pid = await _long_job_after_a_quick_one(tm, release)
        normal = [tm.submit(sleep_then_pid, 0.05) for _ in range(HELD_AHEAD)]
        await wait_until(tm, lambda: testing.assigned_worker_pid(tm, normal[-1]) == pid)  # all held
        urgent = tm.options(priority=10).submit(sleep_then_pid, 0)
        await trio.sleep(2 * HELD_BUDGET)  # the long job is long: once it ends, its worker's budget is one job
        release.touch()
        with trio.fail_after(30):
            await tm.result(urgent)
        before = [tid for tid in normal if testing.snapshot(tm, tid).status is TaskStatus.COMPLETED]
        assert len(before) <= 2  # the one that started when the long job ended, and one held behind it
        with trio.fail_after(30):
            await tm.gather(normal)


async def test_a_held_job_times_out_from_its_own_start_not_from_when_it_was_handed_over(tmp_path: Path) -> None:
    release = tmp_path / "release"
    async with TaskManager(1) as tm:
        long, pid = await _long_job_after_a_quick_one(tm, release)
        held = tm.options(timeout=1.0).submit(sleep_then_pid, 0)
        await wait_until(tm, lambda: testing.assigned_worker_pid(tm, held) == pid)
        await trio.sleep(1.5)  # past its timeout, were it counted from the hand-over (the point of the test)
        assert testing.snapshot(tm, held).status is TaskStatus.PENDING
        release.touch()
        with trio.fail_after(20):
            assert await tm.result(held) == pid
            assert await tm.result(long) == pid
