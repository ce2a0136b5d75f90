"""Claims from the shared queue: a task queued while a claim is on its way is never left waiting."""

from __future__ import annotations

from pathlib import Path

import trio

import jobs_store_many as jobs
from genro_tasks import TaskManager, TaskStatus, testing


async def test_tasks_queued_behind_a_claim_that_comes_back_short_still_run(tmp_path: Path) -> None:
    async with TaskManager(max_workers=1, store=tmp_path / "tasks.db") as tm:
        # Chosen ids go through the shared queue, and a burst of short tasks makes the process
        # look further and further ahead. Once the look-ahead is at its cap, one submission's
        # claim covers the slots of the next ones, which send none of their own; their inserts
        # are written after that claim ran, so it comes back short. They must still be claimed.
        for burst in range(3):
            ids = [tm.submit(jobs.pid_and_double, i, task_id=f"burst{burst}-{i}") for i in range(12)]
            with trio.fail_after(30):
                assert [value for _pid, value in await tm.gather(ids)] == [2 * i for i in range(12)]


async def test_a_process_forgets_the_tasks_it_submitted_once_another_runs_them(tmp_path: Path) -> None:
    """The submitting process keeps no bookkeeping for tasks another process claimed and finished."""
    path = tmp_path / "tasks.db"
    async with TaskManager(max_workers=0, store=path) as client, TaskManager(max_workers=2, store=path) as runner:
        ids = [client.submit(jobs.pid_and_double, i) for i in range(200)]
        await client.flush()
        with trio.fail_after(60):
            results = await client.gather(ids)
            await client.flush()
        assert [value for _pid, value in results] == [2 * i for i in range(200)]
        assert {pid for pid, _value in results} <= testing.worker_pids(runner)  # the runner ran them all
        assert testing.store_tasks_tracked(client) == 0
        assert testing.store_tasks_tracked(runner) == 0


async def test_a_process_keeps_the_row_numbers_of_its_queued_tasks_when_it_reads_them_back(tmp_path: Path) -> None:
    """Tasks this process inserted that wait unclaimed in the shared queue are still its own (it may claim
    them, and then needs no second read of their jobs): reading its own rows back, after another process
    wrote in between, must not forget them. It forgot every one (their owner is nobody while queued)."""
    path = tmp_path / "tasks.db"
    async with TaskManager(max_workers=0, store=path) as here, TaskManager(max_workers=0, store=path) as other:
        theirs = other.submit(jobs.pid_and_double, 0)
        await other.flush()
        ours = [here.submit(jobs.pid_and_double, i) for i in range(5)]
        await here.flush()  # written after the other's row: this process reads its own rows back with it

        def seen_theirs() -> bool:
            try:
                testing.status(here, theirs)
            except KeyError:
                return False
            return True

        with trio.fail_after(10):
            await testing.wait_until(here, seen_theirs)
        assert all(testing.status(here, tid) is TaskStatus.PENDING for tid in ours)
        assert testing.store_tasks_tracked(here) == len(ours)
