"""A worker's death is observed on the worker itself (its pidfd), whatever
happens around it: the forkserver dying, either start method, signals from
outside, a job that moves its worker to another process group."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
import trio

from conftest import wait_pids_gone, wait_status, wait_until
from genro_tasks import TaskManager, TaskStatus, UnpicklableResult, WorkerCrashed, WorkerInitError, testing
from jobs import simple_task
from jobs_death import (
    die_by,
    exit_with,
    init_exit_if_armed,
    init_one_fails_others_wait,
    init_report_pid_then_wait,
    leave_non_daemon_thread,
    leave_own_group_and_sleep,
    return_unloadable,
    wait_for_path,
)


def _forkserver_pid() -> int:
    # Not found through /proc/self/task/*/children: the forkserver is a child of the thread
    # that started the first worker, and a child is no longer listed there once that thread
    # has exited. multiprocessing knows it.
    pid = testing.forkserver_pid()
    assert pid is not None, "no forkserver running"
    return pid


async def test_forkserver_death_leaves_running_jobs_alone(tasks: TaskManager, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    running = [tasks.submit(wait_for_path, str(gate)) for _ in range(2)]
    queued = tasks.submit(simple_task, 4)
    for tid in running:
        await wait_status(tasks, tid, TaskStatus.RUNNING)
    forkserver = _forkserver_pid()
    os.kill(forkserver, signal.SIGKILL)
    await wait_pids_gone([forkserver], 20)
    gate.touch()
    with trio.fail_after(30):
        for tid in running:
            assert (await tasks.result(tid)).startswith("done in ")
        assert await tasks.result(queued) == 8
    assert tasks.statistics().worker_crashes == 0

    # A worker dying now is a crash like any other; its replacement comes from a new forkserver.
    victim = tasks.submit(die_by, signal.SIGKILL)
    with trio.fail_after(30), pytest.raises(WorkerCrashed):
        await tasks.result(victim)
    with trio.fail_after(30):
        assert [await tasks.run(simple_task, n) for n in range(4)] == [0, 2, 4, 6]
    await wait_until(tasks, lambda: len(testing.worker_pids(tasks)) == 2)  # the replacement has started
    assert _forkserver_pid() != forkserver
    assert tasks.statistics().worker_crashes == 1


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
async def test_a_crash_is_a_crash_with_either_start_method(start_method: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="genro_tasks")
    async with TaskManager(max_workers=2, start_method=start_method) as tm:
        rounds = 6
        for _ in range(rounds):
            ids = [tm.submit(exit_with, 3), tm.submit(die_by, signal.SIGKILL)]
            with trio.fail_after(60):
                with pytest.raises(WorkerCrashed, match="exited with code 3"):
                    await tm.result(ids[0])
                with pytest.raises(WorkerCrashed, match="killed by SIGKILL"):
                    await tm.result(ids[1])
            for tid in ids:
                info = await tm.info(tid)
                assert info.status is TaskStatus.FAILED
                assert info.error is not None
                assert info.error.startswith("WorkerCrashed")
        assert tm.statistics().worker_crashes == 2 * rounds
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_external_sigkill_reads_as_a_crash_naming_the_signal(tasks: TaskManager, tmp_path: Path) -> None:
    tid = tasks.submit(wait_for_path, str(tmp_path / "never"))
    await wait_status(tasks, tid, TaskStatus.RUNNING)
    pid = (await tasks.info(tid)).worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with trio.fail_after(30), pytest.raises(WorkerCrashed, match=r"killed by SIGKILL \(signal 9\)"):
        await tasks.result(tid)


async def _moved_pids(tm: TaskManager, tid: str) -> list[int]:
    """Wait until the job says it moved its worker; return the pids of the children it left."""
    with trio.fail_after(20):
        async for info in tm.watch(tid):
            if info.progress_message:
                return [int(p) for p in info.progress_message.split()]
    raise AssertionError("the job ended before moving its worker")


async def test_cancel_reaches_a_worker_that_left_its_process_group(tasks: TaskManager) -> None:
    tid = tasks.submit(leave_own_group_and_sleep)
    moved = await _moved_pids(tasks, tid)
    pid = (await tasks.info(tid)).worker_pid
    assert pid is not None
    with trio.fail_after(20):
        assert await tasks.cancel(tid)
    await wait_pids_gone([pid, *moved], 20)


async def test_shutdown_without_wait_reaches_a_worker_that_left_its_group() -> None:
    tm = TaskManager(max_workers=1)
    await tm.startup()
    tid = tm.submit(leave_own_group_and_sleep)
    moved = await _moved_pids(tm, tid)
    with trio.fail_after(20):
        await tm.shutdown(wait=False)
    assert (await tm.info(tid)).status is TaskStatus.CANCELLED
    await wait_pids_gone(moved, 20)


async def test_an_initializer_that_kills_its_worker_fails_queued_tasks(tmp_path: Path) -> None:
    """Not PENDING forever, and shutdown(wait=True) stays bounded."""
    tm = TaskManager(max_workers=1, initializer=init_exit_if_armed, initargs=(str(tmp_path),))
    await tm.startup()
    try:
        (tmp_path / "armed").touch()
        victim = tm.submit(die_by, signal.SIGKILL)
        queued = tm.submit(simple_task, 1)
        with trio.fail_after(30):
            with pytest.raises(WorkerCrashed):
                await tm.result(victim)
            with pytest.raises(WorkerInitError, match="exited with code 7 before it was ready"):
                await tm.result(queued)
    finally:
        with trio.fail_after(30):
            await tm.shutdown(wait=True)


async def test_one_failed_initializer_does_not_fail_what_a_starting_worker_can_run(tmp_path: Path) -> None:
    tm = TaskManager(max_workers=2, initializer=init_one_fails_others_wait, initargs=(str(tmp_path),))
    await tm.startup()
    try:
        (tmp_path / "armed").touch()
        victims = [tm.submit(die_by, signal.SIGKILL) for _ in range(2)]
        with trio.fail_after(30):
            for victim in victims:
                with pytest.raises(WorkerCrashed):
                    await tm.result(victim)
        queued = tm.submit(simple_task, 5)
        # Both replacements start; one initializer raises, the other waits at the gate.
        await wait_until(tm, lambda: tm.statistics().worker_restarts >= 3, timeout=30)
        assert await tm.status(queued) is TaskStatus.PENDING
        (tmp_path / "gate").touch()
        with trio.fail_after(30):
            assert await tm.result(queued) == 10
    finally:
        (tmp_path / "gate").touch()
        with trio.fail_after(30):
            await tm.shutdown(wait=False)


@pytest.mark.parametrize("kind", ["value-error", "system-exit"])
async def test_completed_means_result_returns(tasks: TaskManager, kind: str) -> None:
    """A result that cannot be unpickled here is FAILED with UnpicklableResult, never COMPLETED."""
    tid = tasks.submit(return_unloadable, kind)
    with trio.fail_after(30), pytest.raises(UnpicklableResult, match="cannot be unpickled in this process"):
        await tasks.result(tid)
    info = await tasks.info(tid)
    assert info.status is TaskStatus.FAILED
    assert info.error is not None
    assert info.error.startswith("UnpicklableResult")
    with trio.fail_after(30):
        assert await tasks.run(simple_task, 2) == 4


async def test_a_retired_worker_that_will_not_exit_is_killed() -> None:
    """The pool never grows past max_workers with workers that ignore being told to stop."""
    async with TaskManager(max_workers=1, max_tasks_per_worker=1) as tm:
        with trio.fail_after(30):
            first = await tm.run(leave_non_daemon_thread)
            second = await tm.run(leave_non_daemon_thread)
        assert first != second
        await wait_pids_gone([first], 30)


async def _new_starting_pid(directory: Path, known: set[int]) -> int:
    """Wait until a starting worker other than ``known`` wrote its pid (initializer's file)."""
    for _ in range(3000):
        found = {int(p.read_text() or 0) for p in directory.glob("starting-*")} - known - {0}
        if found:
            return found.pop()
        await trio.sleep(0.01)
    raise AssertionError("no worker started")


async def test_a_starting_worker_killed_from_outside_is_not_an_initializer_failure(tmp_path: Path) -> None:
    tm = TaskManager(max_workers=1, initializer=init_report_pid_then_wait, initargs=(str(tmp_path),))
    await tm.startup()
    try:
        (tmp_path / "armed").touch()
        victim = tm.submit(die_by, signal.SIGKILL)
        with trio.fail_after(30), pytest.raises(WorkerCrashed):
            await tm.result(victim)
        queued = tm.submit(simple_task, 6)
        starting = await _new_starting_pid(tmp_path, set())
        os.kill(starting, signal.SIGKILL)  # killed while its initializer runs
        await _new_starting_pid(tmp_path, {starting})  # its replacement is starting
        assert await tm.status(queued) is TaskStatus.PENDING
        (tmp_path / "gate").touch()
        with trio.fail_after(30):
            assert await tm.result(queued) == 12
    finally:
        (tmp_path / "gate").touch()
        with trio.fail_after(30):
            await tm.shutdown(wait=False)


async def test_external_sigterm_reads_as_a_crash_naming_the_signal(tasks: TaskManager, tmp_path: Path) -> None:
    """Only the manager's own request is a graceful cancel; anyone else's SIGTERM is a crash."""
    tid = tasks.submit(wait_for_path, str(tmp_path / "never"))
    await wait_status(tasks, tid, TaskStatus.RUNNING)
    pid = (await tasks.info(tid)).worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    with trio.fail_after(30), pytest.raises(WorkerCrashed, match=r"killed by SIGTERM \(signal 15\)"):
        await tasks.result(tid)
    # The manager's own graceful cancel still is one.
    tid = tasks.submit(wait_for_path, str(tmp_path / "never"))
    await wait_status(tasks, tid, TaskStatus.RUNNING)
    with trio.fail_after(30):
        assert await tasks.cancel(tid, grace=10)
    assert (await tasks.info(tid)).status is TaskStatus.CANCELLED
