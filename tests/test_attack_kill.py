"""Attacks on the kill paths of the process pool: jobs that harm their own worker, with real processes.

Each test waits on states and events (never on a lucky sleep) and bounds every wait with
``trio.fail_after``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from conftest import pid_gone, wait_pids_gone, wait_status
from genro_tasks import TaskManager, TaskStatus, WorkerCrashed
from jobs_kill import leave_a_child_then_exit, leave_hostile_stdout
from jobs_pipeline import mark_started, stop_in_clean_up_after
from test_pipelining import _appears, _busy_worker, _held_ahead


@pytest.mark.parametrize("kind", ["closed-raises", "flush-exits"])
async def test_a_job_that_leaves_a_hostile_stdout_keeps_its_result_and_its_worker(tmp_path: Path, kind: str) -> None:
    """The worker's own code after the job (flushing, restoring std streams) survives what the job left.

    The job is held behind another, so the worker takes the next job's ticket before its clean-up: its
    result leaves after that clean-up, and a clean-up that raised lost it (WorkerCrashed).
    """
    trace = tmp_path / "trace"
    async with TaskManager(1) as tm:
        long, pid, release = await _busy_worker(tm, tmp_path)
        hostile = tm.submit(leave_hostile_stdout, kind)
        after = tm.submit(mark_started, str(trace))
        for tid in (hostile, after):
            await _held_ahead(tm, tid, pid)
        release.touch()
        with trio.fail_after(20):
            assert await tm.result(long) == pid
            assert await tm.result(hostile) == pid
            assert await tm.result(after) == pid  # the same worker lived on
        assert tm.statistics().worker_crashes == 0
        assert trace.read_text().splitlines() == [str(pid)]


@pytest.mark.parametrize("handed", ["to the idle worker", "held behind the job"])
async def test_a_job_handed_to_a_worker_stuck_between_jobs_runs_on_another(tmp_path: Path, handed: str) -> None:
    """The job before returned (its result arrived), then its worker stopped in its clean-up, before it
    read the next job: that job never starts there. It must not stay PENDING for ever (no timeout
    counts while it is PENDING, and ``shutdown(wait=True)`` waits for it): the worker, silent while it
    owes that job's STARTED, is replaced and the job runs there, once.
    """
    base, trace = tmp_path / "stopper", tmp_path / "trace"
    async with TaskManager(1) as tm:
        stopper = tm.submit(stop_in_clean_up_after, str(base))
        await wait_status(tm, stopper, TaskStatus.RUNNING)
        pid = (await tm.info(stopper)).worker_pid
        assert pid is not None
        if handed == "held behind the job":
            victim = tm.submit(mark_started, str(trace))
            await _held_ahead(tm, victim, pid)
        (tmp_path / "stopper.release").touch()
        with trio.fail_after(20):
            assert await tm.result(stopper) == pid
            await _appears(tmp_path / "stopper.stopped")  # it stops itself after its result left
        if handed == "to the idle worker":
            victim = tm.submit(mark_started, str(trace))
        with trio.fail_after(10):
            ran_on = await tm.result(victim)
        assert ran_on != pid
        assert pid_gone(pid)
        assert trace.read_text().splitlines() == [str(ran_on)]
        assert (await tm.info(victim)).attempt == 1  # it never started on the stuck worker


async def test_shutdown_waiting_for_a_held_job_whose_worker_is_stuck_in_the_clean_up_before_it_returns(
    tmp_path: Path,
) -> None:
    """``shutdown(wait=True)``: the job before the held one returned, then its worker stopped in its clean-up.

    That job's result is not held back by the clean-up (it completes), and the held job, which the stuck
    worker never started, runs on a replacement: the shutdown returns, nothing left RUNNING for ever.
    """
    base, trace = tmp_path / "stopper", tmp_path / "trace"
    tm = TaskManager(1)
    await tm.startup()
    try:
        _long, pid, release = await _busy_worker(tm, tmp_path)
        stopper = tm.submit(stop_in_clean_up_after, str(base))
        ahead = tm.submit(mark_started, str(trace))
        for tid in (stopper, ahead):
            await _held_ahead(tm, tid, pid)
        (tmp_path / "stopper.release").touch()
        release.touch()
        with trio.fail_after(20):
            await _appears(tmp_path / "stopper.stopped")
        with trio.fail_after(10):
            await tm.shutdown(wait=True)
    finally:
        with trio.fail_after(20):
            await tm.shutdown(wait=False)  # (after a failure above: never leave the stuck worker behind)
    assert (await tm.info(stopper)).status is TaskStatus.COMPLETED
    assert (await tm.info(ahead)).status is TaskStatus.COMPLETED
    assert pid_gone(pid)
    assert trace.read_text().splitlines() != [str(pid)]
    assert len(trace.read_text().splitlines()) == 1


async def test_a_worker_that_dies_on_its_own_takes_what_its_job_left_in_its_process_group(tmp_path: Path) -> None:
    """The job forks a child that ignores SIGTERM, then ends its worker (``os._exit``): the child is killed too.

    Nobody asked the worker to die, so no kill was sent; its process group still holds the child.
    """
    async with TaskManager(1) as tm:
        with trio.fail_after(20), pytest.raises(WorkerCrashed):
            await tm.run(leave_a_child_then_exit, str(tmp_path / "child"), 3)
        child = int((tmp_path / "child").read_text())
        await wait_pids_gone([child], 10)
