"""Hard cancel: queued tasks leave the queue, running ones die with their worker."""

from __future__ import annotations

import os

import pytest
import trio

from conftest import pid_gone, wait_pids_gone, wait_status, wait_until
from genro_tasks import TaskCancelled, TaskManager, TaskStatus, testing
from jobs import simple_task, slow_task, spawn_child_and_sleep


async def test_cancel_pending(tasks: TaskManager) -> None:
    busy = [tasks.submit(slow_task, 30) for _ in range(2)]
    queued = tasks.submit(simple_task, 1)
    await wait_until(tasks, lambda: all(testing.status(tasks, b) is TaskStatus.RUNNING for b in busy))
    assert await tasks.status(queued) is TaskStatus.PENDING
    assert await tasks.cancel(queued) is True
    assert await tasks.status(queued) is TaskStatus.CANCELLED
    info = await tasks.info(queued)
    assert info.started_at is None
    assert info.completed_at is not None
    with pytest.raises(TaskCancelled, match=queued):
        await tasks.result(queued)
    # The running ones were not touched.
    assert [await tasks.status(b) for b in busy] == [TaskStatus.RUNNING] * 2


async def test_cancel_running_kills_worker_and_refills(tasks: TaskManager) -> None:
    tid = tasks.submit(slow_task, 60)
    other = tasks.submit(slow_task, 60)
    await wait_status(tasks, tid, TaskStatus.RUNNING)
    await wait_status(tasks, other, TaskStatus.RUNNING)
    pid = (await tasks.info(tid)).worker_pid
    assert pid is not None
    with trio.fail_after(10):
        assert await tasks.cancel(tid) is True
    # Recorded and reaped before cancel() returned.
    assert await tasks.status(tid) is TaskStatus.CANCELLED
    assert pid_gone(pid)
    assert await tasks.status(other) is TaskStatus.RUNNING
    # The slot was refilled: a new task runs while `other` still occupies the other worker.
    with trio.fail_after(20):
        assert await tasks.run(simple_task, 21) == 42
    with pytest.raises(TaskCancelled):
        await tasks.result(tid)


async def test_cancel_kills_processes_the_job_started(tasks: TaskManager) -> None:
    tid = tasks.submit(spawn_child_and_sleep)
    await wait_until(tasks, lambda: (testing.snapshot(tasks, tid).progress_message or "").startswith("child="))
    info = await tasks.info(tid)
    assert info.progress_message is not None
    child = int(info.progress_message.split("=")[1])
    assert not pid_gone(child)
    with trio.fail_after(10):
        assert await tasks.cancel(tid) is True
    await wait_pids_gone([child], limit=5)


async def test_cancel_finished_returns_false(tasks: TaskManager) -> None:
    tid = tasks.submit(simple_task, 2)
    with trio.fail_after(20):
        assert await tasks.result(tid) == 4
    assert await tasks.cancel(tid) is False
    assert await tasks.status(tid) is TaskStatus.COMPLETED
    assert await tasks.cancel(tid) is False


async def test_cancel_twice(tasks: TaskManager) -> None:
    tid = tasks.submit(slow_task, 60)
    await wait_status(tasks, tid, TaskStatus.RUNNING)
    results: list[bool] = []

    async def cancel() -> None:
        results.append(await tasks.cancel(tid))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel)
            nursery.start_soon(cancel)
    assert results == [True, True]
    assert await tasks.status(tid) is TaskStatus.CANCELLED


async def test_run_cancelled_by_caller_kills_task(tasks: TaskManager) -> None:
    seen: list[str] = []

    async def runner() -> None:
        await tasks.run(slow_task, 60, task_id="victim")

    with trio.move_on_after(30) as outer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner)
            await wait_status(tasks, "victim", TaskStatus.RUNNING)
            pid = (await tasks.info("victim")).worker_pid
            assert pid is not None
            nursery.cancel_scope.cancel()
        seen.append("done")
    assert not outer.cancelled_caught
    # run() returned only after the task was killed, reaped and recorded.
    assert seen == ["done"]
    assert await tasks.status("victim") is TaskStatus.CANCELLED
    victim_pid = (await tasks.info("victim")).worker_pid
    assert victim_pid is not None
    assert pid_gone(victim_pid)


async def test_cancel_assigned_but_not_started(tasks: TaskManager) -> None:
    # Fill the workers, then submit: the third task waits in the queue.
    ids = [tasks.submit(simple_task, i) for i in range(50)]
    with trio.fail_after(20):
        outcomes = [await tasks.cancel(i) for i in reversed(ids)]
        for tid, cancelled in zip(reversed(ids), outcomes, strict=True):
            status = await tasks.status(tid)
            assert status is (TaskStatus.CANCELLED if cancelled else TaskStatus.COMPLETED)
    # Whatever happened, the pool still works.
    with trio.fail_after(20):
        assert await tasks.run(simple_task, 5) == 10


async def test_worker_pid_changes_after_cancel(tasks: TaskManager) -> None:
    pids_before = set(testing.worker_pids(tasks))
    tid = tasks.submit(slow_task, 60)
    await wait_status(tasks, tid, TaskStatus.RUNNING)
    killed = (await tasks.info(tid)).worker_pid
    with trio.fail_after(10):
        await tasks.cancel(tid)
    await wait_until(tasks, lambda: len(testing.worker_pids(tasks)) == 2)
    pids_after = set(testing.worker_pids(tasks))
    assert killed in pids_before
    assert killed not in pids_after
    assert os.getpid() not in pids_after
