"""Crash isolation: a dying worker fails only its own task; the pool carries on."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import trio

from conftest import wait_status, wait_until
from genro_tasks import TaskManager, TaskStatus, WorkerCrashed, testing
from jobs import exit_hard, kill_self, segfault, simple_task, slow_task


async def _assert_crash(tasks: TaskManager, tid: str, match: str) -> None:
    with trio.fail_after(20), pytest.raises(WorkerCrashed, match=match) as info:
        await tasks.result(tid)
    assert info.value.task_id == tid
    record = await tasks.info(tid)
    assert record.status is TaskStatus.FAILED
    assert record.error is not None
    assert "WorkerCrashed" in record.error


async def test_os_exit(tasks: TaskManager) -> None:
    bystander = tasks.submit(slow_task, 1.0)
    await wait_status(tasks, bystander, TaskStatus.RUNNING)
    tid = tasks.submit(exit_hard, 42)
    await _assert_crash(tasks, tid, "exited with code 42")
    assert await tasks.status(bystander) is TaskStatus.RUNNING
    with trio.fail_after(20):
        assert await tasks.result(bystander) == "done"
        assert await tasks.run(simple_task, 4) == 8


async def test_segfault(tasks: TaskManager) -> None:
    tid = tasks.submit(segfault)
    await _assert_crash(tasks, tid, "SIGSEGV")
    with trio.fail_after(20):
        assert await tasks.run(simple_task, 1) == 2


async def test_killed_from_outside(tasks: TaskManager) -> None:
    tid = tasks.submit(slow_task, 60)
    other = tasks.submit(slow_task, 60)
    await wait_status(tasks, tid, TaskStatus.RUNNING)
    await wait_status(tasks, other, TaskStatus.RUNNING)
    pid = (await tasks.info(tid)).worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await _assert_crash(tasks, tid, f"Worker process {pid} died .*SIGKILL")
    assert await tasks.status(other) is TaskStatus.RUNNING
    with trio.fail_after(20):
        assert await tasks.run(simple_task, 3) == 6


async def test_self_signal(tasks: TaskManager) -> None:
    tid = tasks.submit(kill_self, signal.SIGUSR1)
    await _assert_crash(tasks, tid, "SIGUSR1")


async def test_idle_worker_death_is_replaced_and_logged(tasks: TaskManager, caplog: pytest.LogCaptureFixture) -> None:
    victim = min(testing.worker_pids(tasks))
    with caplog.at_level(logging.WARNING, logger="genro_tasks"):
        os.kill(victim, signal.SIGKILL)
        await wait_until(
            tasks, lambda: victim not in testing.worker_pids(tasks) and len(testing.worker_pids(tasks)) == 2
        )
        # readiness of the replacement
        ids = [tasks.submit(simple_task, i) for i in range(4)]
        with trio.fail_after(20):
            assert [await tasks.result(t) for t in ids] == [0, 2, 4, 6]
    assert any("idle worker" in r.getMessage() and str(victim) in r.getMessage() for r in caplog.records)
    assert tasks.statistics().worker_crashes >= 1


async def test_many_crashes_in_a_row(tasks: TaskManager) -> None:
    ids = [tasks.submit(exit_hard, 3) for _ in range(10)]
    good = [tasks.submit(simple_task, i) for i in range(10)]
    with trio.fail_after(60):
        for tid in ids:
            with pytest.raises(WorkerCrashed):
                await tasks.result(tid)
        assert [await tasks.result(g) for g in good] == [2 * i for i in range(10)]
