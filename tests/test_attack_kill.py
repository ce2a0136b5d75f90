"""Attacks on the kill paths of the process pool: jobs that harm their own worker, with real processes.

Each test waits on states and events (never on a lucky sleep) and bounds every wait with
``trio.fail_after``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from conftest import pid_gone, wait_pids_gone, wait_status
from genro_tasks import TaskCancelled, TaskManager, TaskStatus, WorkerCrashed, testing
from genro_tasks._process_backend import _OWED_LIMIT, ProcessBackend
from genro_tasks._worker_proc import WorkerProcess
from genro_tasks_worker._protocol import DONE_OK
from jobs_kill import leave_a_child_then_exit, leave_a_ticking_timer, leave_hostile_stdout, stop_then_return_bytes
from jobs_pipeline import mark_started, sleep_then_pid, stop_in_clean_up_after
from test_pipelining import _appears, _busy_worker, _held_ahead, _stopper_then_held


@pytest.mark.parametrize("kind", ["closed-raises", "flush-exits"])
async def test_a_job_that_leaves_a_hostile_stdout_keeps_its_result_and_its_worker(tmp_path: Path, kind: str) -> None:
    """The worker's own code after the job (flushing, restoring std streams) survives what the job left.

    The job is held behind another, and another is held behind it: a flush or a clean-up that raised
    took the worker down, losing the job's result (WorkerCrashed) or the next job the worker holds.
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
    trace = tmp_path / "trace"
    tm = TaskManager(1)
    await tm.startup()
    try:
        _long, pid, stopper, ahead = await _stopper_then_held(tm, tmp_path)
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


def stopped(pid: int) -> bool:
    """True if process ``pid`` is stopped (SIGSTOP)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def only_worker(tm: TaskManager) -> WorkerProcess:
    """The one worker process of a single-worker manager (its framer shows what the parent is reading)."""
    assert tm._scheduler is not None
    backend = tm._scheduler.backend
    assert isinstance(backend, ProcessBackend)
    [worker] = backend.workers
    return worker


async def hold_mid_frame(worker: WorkerProcess, pid: int, kind: int) -> None:
    """With worker ``pid`` stopped (SIGSTOP) before sending a large ``kind`` frame: until the parent holds part of it.

    The worker runs only while this process (its trio loop included) is blocked, so it only fills the
    pipe; then the parent reads with the worker frozen again. It ends frozen, the frame half read.
    """
    with trio.fail_after(20):
        while (worker.reader.framer.receiving or (0, 0))[0] != kind:
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.02)  # noqa: ASYNC251
            os.kill(pid, signal.SIGSTOP)
            await trio.sleep(0.01)


@pytest.mark.parametrize("then", ["bytes flow again", "frozen for good"])
async def test_a_cancel_while_a_large_result_arrives_waits_for_it_while_bytes_flow(tmp_path: Path, then: str) -> None:
    """The job has returned and its 32 MiB result is half-way through the pipe when the cancel comes.

    The job has ended: killing its worker would only lose the result. The cancel waits while bytes flow
    (the task COMPLETES, ``cancel`` returns False); from a worker that sends nothing more for 2 s it
    ends with the kill (CANCELLED), never hanging.
    """
    size, marker = 32 << 20, tmp_path / "returning"
    async with TaskManager(1) as tm:
        with trio.fail_after(20):
            pid = await tm.run(sleep_then_pid, 0)
        worker = only_worker(tm)
        tid = tm.submit(stop_then_return_bytes, str(marker), size)
        try:
            with trio.fail_after(20):
                await _appears(marker)
                while not stopped(pid):  # noqa: ASYNC110
                    await trio.sleep(0.005)
            await hold_mid_frame(worker, pid, DONE_OK)  # the parent holds part of the result
            async with trio.open_nursery() as nursery:
                cancelled: list[bool] = []

                async def cancel() -> None:
                    cancelled.append(await tm.cancel(tid))

                nursery.start_soon(cancel)
                await trio.testing.wait_all_tasks_blocked()  # the cancel waits for the task to end
                assert testing.kill_requested(tm, tid)
                assert not pid_gone(pid)  # asked, not carried out: the worker lives
                if then == "bytes flow again":
                    os.kill(pid, signal.SIGCONT)
                with trio.fail_after(10):
                    await wait_status(
                        tm, tid, TaskStatus.COMPLETED if then == "bytes flow again" else TaskStatus.CANCELLED
                    )
        finally:
            if not pid_gone(pid):
                os.kill(pid, signal.SIGCONT)
        if then == "bytes flow again":
            assert cancelled == [False]
            assert len(await tm.result(tid)) == size
            assert await tm.run(sleep_then_pid, 0) == pid  # the same worker serves on
        else:
            assert cancelled == [True]
            with pytest.raises(TaskCancelled):
                await tm.result(tid)
            assert pid_gone(pid)


async def test_a_timer_the_job_leaves_ticking_ends_with_the_job_not_with_its_result(tmp_path: Path) -> None:
    """A 1 ms repeating timer whose handler raises, left by a job with a 64 MiB result.

    The job's timers and signal handlers end when its code returns, before the worker's own code
    pickles and sends the result: the task completes, and the worker serves on.
    """
    size = 64 << 20
    async with TaskManager(1) as tm:
        with trio.fail_after(20):
            pid = await tm.run(sleep_then_pid, 0)
            for _ in range(3):
                assert len(await tm.run(leave_a_ticking_timer, size)) == size
            assert await tm.run(sleep_then_pid, 0) == pid
        assert tm.statistics().worker_crashes == 0


async def test_workers_are_not_taken_for_stuck_when_the_event_loop_was_blocked() -> None:
    """The application blocks the event loop (a synchronous call) for longer than a worker may stay
    silent while it owes a STARTED; meanwhile the workers start and finish their jobs, unread.

    Their messages wait in the pipes: they are not killed for it, every job completes. (Which of the
    read and the deadline trio runs first after the block is its choice: three rounds.)
    """
    async with TaskManager(2) as tm:
        with trio.fail_after(20):
            pids = set(await tm.gather([tm.submit(sleep_then_pid, 0.2) for _ in range(2)]))
        for _ in range(3):
            ids = [tm.submit(sleep_then_pid, 0) for _ in range(2)]  # handed to the idle workers at once
            time.sleep(_OWED_LIMIT + 0.2)  # noqa: ASYNC251 - the point of the test: the event loop is blocked
            with trio.fail_after(20):
                assert set(await tm.gather(ids)) <= pids
        assert tm.statistics().worker_crashes == 0
