"""Fault injection with real processes: whatever breaks, every task ends in
exactly one terminal state, nothing hangs, and the pool recovers."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from conftest import wait_pids_gone, wait_status, wait_until
from genro_tasks import ManagerClosed, SupervisorFailed, TaskManager, TaskStatus, WorkerCrashed
from genro_tasks_worker._protocol import Started
from jobs import (
    CustomBaseException,
    big_result,
    close_std_fds,
    echo,
    exit_zero,
    leave_children_behind,
    print_something,
    progress_flood,
    raise_base_exception,
    simple_task,
    slow_task,
    write_corrupt_frame,
    write_frame_for_other_task,
    write_huge_frame_header,
    write_truncated_frame,
)


async def _pool_still_works(tm: TaskManager) -> None:
    with trio.fail_after(30):
        assert await tm.run(simple_task, 21) == 42


async def test_worker_killed_before_it_reports_start(tasks: TaskManager) -> None:
    blob = b"a" * (64 * 1024 * 1024)
    tid = tasks.submit(echo, blob)
    rec = tasks._records[tid]
    assert rec.worker is not None  # dispatched at once, still PENDING
    os.kill(rec.worker.pid, signal.SIGKILL)
    with trio.fail_after(60):
        assert await tasks.result(tid) == blob  # requeued: it never started, so it is not lost
    info = await tasks.info(tid)
    assert info.status is TaskStatus.COMPLETED


async def test_worker_dies_mid_result_frame(tasks: TaskManager) -> None:
    tid = tasks.submit(write_truncated_frame)
    with trio.fail_after(30), pytest.raises(WorkerCrashed, match="exited with code 9"):
        await tasks.result(tid)
    await _pool_still_works(tasks)


async def test_worker_killed_while_sending_large_result(tasks: TaskManager) -> None:
    tid = tasks.submit(big_result, 200)
    await wait_status(tasks, tid, TaskStatus.RUNNING)
    pid = (await tasks.info(tid)).worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with trio.fail_after(60):
        try:
            value = await tasks.result(tid)
        except WorkerCrashed:
            assert (await tasks.info(tid)).status is TaskStatus.FAILED
        else:  # the result was all through before the signal landed
            assert len(value) == 200 * 1024 * 1024
    await _pool_still_works(tasks)


async def test_worker_killed_during_progress_flood(tasks: TaskManager) -> None:
    bystander = tasks.submit(slow_task, 0.5)
    tid = tasks.submit(progress_flood, 50_000_000)
    await wait_until(tasks, lambda: (tasks._records[tid].progress or 0) > 0.001)
    pid = (await tasks.info(tid)).worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with trio.fail_after(30):
        with pytest.raises(WorkerCrashed, match="SIGKILL"):
            await tasks.result(tid)
        assert await tasks.result(bystander) == "done"
    await _pool_still_works(tasks)


@pytest.mark.parametrize("job", [write_corrupt_frame, write_frame_for_other_task, write_huge_frame_header])
async def test_corrupt_frame_means_crashed_worker(tasks: TaskManager, job: object) -> None:
    bystander = tasks.submit(slow_task, 0.5)
    await wait_status(tasks, bystander, TaskStatus.RUNNING)
    tid = tasks.submit(job)  # type: ignore[arg-type]
    with trio.fail_after(30), pytest.raises(WorkerCrashed, match="corrupt message"):
        await tasks.result(tid)
    assert tasks._sup is not None
    assert tasks._sup.failed is None  # the supervisor is fine
    with trio.fail_after(30):
        assert await tasks.result(bystander) == "done"  # and the other worker's task too
    await _pool_still_works(tasks)


async def test_job_closing_std_fds(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        assert await tasks.run(close_std_fds) == "closed"
        # Same workers, and they can still print.
        results = [await tasks.run(print_something) for _ in range(4)]
    assert results == ["printed"] * 4


async def test_children_left_behind_are_killed(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        pids = await tasks.run(leave_children_behind)
    await wait_pids_gone(pids, limit=5)


async def test_sys_exit_zero_and_base_exceptions_fail_the_task(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        with pytest.raises(SystemExit):
            await tasks.run(exit_zero)
        with pytest.raises(CustomBaseException, match="not an Exception"):
            await tasks.run(raise_base_exception)
    statuses = [i.status for i in tasks.list_tasks()]
    assert statuses == [TaskStatus.FAILED, TaskStatus.FAILED]
    await _pool_still_works(tasks)


async def test_supervisor_failure_fails_everything_loudly() -> None:
    tm = TaskManager(1)
    await tm.startup()
    sup = tm._sup
    assert sup is not None
    original = sup._on_frame

    def broken(w: object, msg: object) -> None:
        if isinstance(msg, Started):  # blow up inside the supervisor
            raise RuntimeError("injected supervisor bug")
        original(w, msg)  # type: ignore[arg-type]

    sup._on_frame = broken  # type: ignore[method-assign]
    running = tm.submit(slow_task, 60)
    queued = tm.submit(simple_task, 1)
    workers = [w.pid for w in sup.workers]
    with trio.fail_after(30):
        for tid in (running, queued):
            with pytest.raises(SupervisorFailed, match="injected supervisor bug"):
                await tm.result(tid)
    assert not tm.is_running
    with pytest.raises(ManagerClosed, match="supervisor failed"):
        tm.submit(simple_task, 2)
    await wait_pids_gone(workers, limit=10)
    with trio.fail_after(30):
        await tm.shutdown()
    assert (await tm.info(running)).status is TaskStatus.FAILED


async def test_supervisor_bug_while_reading_never_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    from genro_tasks import _worker_proc

    def broken(self: object, frames: object) -> bool:
        raise AttributeError("injected reader bug")

    monkeypatch.setattr(_worker_proc.FrameReader, "read", broken)
    tm = TaskManager(2)
    with trio.fail_after(30), pytest.raises(SupervisorFailed, match="injected reader bug"):
        await tm.startup()
    assert not tm.is_running
