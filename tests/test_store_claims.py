"""Claims from the shared queue: a task queued while a claim is on its way is never left waiting."""

from __future__ import annotations

from pathlib import Path

import trio

import jobs_store_many as jobs
from genro_tasks import TaskManager, testing


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
