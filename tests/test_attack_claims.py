"""Attacks on the shared queue of a store: claims, held jobs and cancels across real processes.

Each test runs real managers on a real SQLite file: the test's own, and a second
process (tests/store_app.py) on the same file.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio
import trio.testing

import jobs_store
from genro_tasks import TaskManager, TaskStatus, testing
from jobs_pipeline import mark_started, wait_for_file
from test_store import server, wait_status


async def _claimed_elsewhere(tm: TaskManager, count: int) -> None:
    """Wait until the other process has claimed all but ``count`` of this client's queued tasks."""
    with trio.fail_after(20):
        await testing.wait_until(tm, lambda: tm.statistics().tasks_queued <= count)


async def test_a_task_claimed_behind_a_long_job_runs_on_an_idle_worker_of_another_process(tmp_path: Path) -> None:
    """Process A's only worker runs a long job; process B has an idle worker; a task submitted in A runs in B.

    Promise: no task stays PENDING while any process has an idle worker.
    """
    db, release = tmp_path / "tasks.db", tmp_path / "release"
    async with TaskManager(max_workers=1, store=db) as tm:
        long = tm.submit(wait_for_file, str(release))
        await wait_status(tm, long, TaskStatus.RUNNING)
        async with server(db, workers=1) as other:
            try:
                quick = tm.submit(jobs_store.where)
                with trio.fail_after(5):  # far more than B's poll and claim; A's long job takes a minute
                    ran_on = await tm.result(quick)
            finally:
                release.touch()
            assert ran_on != (await tm.info(long)).worker_pid
            assert ran_on != other.pid


async def test_a_task_cancelled_while_its_owner_was_stopped_never_runs_once_the_owner_dies(tmp_path: Path) -> None:
    """B cancels a task A claimed (held behind A's long job) while A is stopped; A is then SIGKILLed.

    The cancel was accepted (written on the task's row): once A is known dead the task must
    end CANCELLED (and cancel() return True), never go back to the shared queue to run elsewhere.
    Only client-only managers are left, so nothing can claim it meanwhile: the outcome is the recovery's.
    """
    db, trace = tmp_path / "tasks.db", tmp_path / "trace"
    async with TaskManager(max_workers=0, store=db) as client:
        # In the file before A starts, so A claims both at once, its worker free (a task submitted once
        # the long job has run a while is left in the shared queue for a worker of another process).
        long = client.submit(wait_for_file, str(tmp_path / "never"))
        victim = client.submit(mark_started, str(trace))
        await client.flush()
        async with server(db, workers=1) as owner:
            await wait_status(client, long, TaskStatus.RUNNING)
            await _claimed_elsewhere(client, 0)  # A holds it, not started
            assert (await client.info(victim)).status is TaskStatus.PENDING
            owner.proc.send_signal(signal.SIGSTOP)
            outcome: list[bool] = []

            async def cancel() -> None:
                outcome.append(await client.cancel(victim))

            # A's death is seen within a heartbeat (a second); the nursery ends once cancel() returned.
            with trio.fail_after(8):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel)
                    await trio.testing.wait_all_tasks_blocked()
                    await client.flush()  # the cancel request is on the row; A, stopped, has not seen it
                    owner.kill()
                    await owner.proc.wait()
                    await wait_status(client, long, TaskStatus.FAILED)  # A's death is recovered (TaskLost)
        assert outcome == [True]
        assert (await client.info(victim)).status is TaskStatus.CANCELLED
        async with TaskManager(max_workers=1, store=db) as runner:
            await runner.flush()
            assert (await runner.info(victim)).status is TaskStatus.CANCELLED
        assert not trace.exists()  # it never ran


async def test_a_task_sent_to_an_idle_worker_not_started_yet_goes_back_to_the_queue_at_shutdown_without_wait(
    tmp_path: Path,
) -> None:
    """With a store, ``shutdown(wait=False)`` kills only what runs here: a PENDING task goes back to the queue.

    The task is handed to the idle worker at once (no ticket: it cannot be taken back), and the worker
    is stopped so that it cannot start it before the kill: it never said STARTED, so it never ran.
    """
    db, trace = tmp_path / "tasks.db", tmp_path / "trace"
    tm = TaskManager(max_workers=1, store=db)
    await tm.startup()
    try:
        with trio.fail_after(20):
            await tm.run(mark_started, str(tmp_path / "warm"))
        [worker] = testing.worker_pids(tm)
        os.kill(worker, signal.SIGSTOP)
        victim = tm.submit(mark_started, str(trace))
        assert testing.assigned_worker_pid(tm, victim) == worker  # sent to it: not in the queue any more
    finally:
        with trio.fail_after(20):
            await tm.shutdown(wait=False)
    assert (await tm.info(victim)).status is TaskStatus.PENDING  # not CANCELLED: it never started
    async with TaskManager(max_workers=1, store=db) as runner:
        with trio.fail_after(20):
            assert await runner.result(victim) != worker
    assert trace.read_text().splitlines() != []  # it ran, once
    assert len(trace.read_text().splitlines()) == 1


async def test_a_cancel_from_another_process_of_a_task_held_behind_a_running_job_never_runs_it(
    tmp_path: Path,
) -> None:
    """A holds the task behind its long job; B cancels it: CANCELLED at once, never run, A's job untouched."""
    db, trace = tmp_path / "tasks.db", tmp_path / "trace"
    async with TaskManager(max_workers=0, store=db) as client:
        # In the file before A starts, so A claims both at once (see the test above).
        long = client.submit(wait_for_file, str(tmp_path / "never"))
        victim = client.submit(mark_started, str(trace))
        await client.flush()
        async with server(db, workers=1):
            await wait_status(client, long, TaskStatus.RUNNING)
            await _claimed_elsewhere(client, 0)
            with trio.fail_after(10):
                assert await client.cancel(victim) is True
            info = await client.info(victim)
            assert (info.status, info.error, info.started_at) == (TaskStatus.CANCELLED, "cancelled while queued", None)
            assert (await client.info(long)).status is TaskStatus.RUNNING  # its worker was not killed
            with trio.fail_after(10):
                assert await client.cancel(long) is True
        assert not trace.exists()
