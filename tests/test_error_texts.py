"""The README's "Reading how a task ended": status values, `error` texts and `traceback`."""

from __future__ import annotations

import pytest
import trio

from genro_tasks import TaskCancelled, TaskManager, TaskStatus
from jobs import failing_task, slow_task


async def running(tm: TaskManager, task_id: str) -> int:
    """Wait until the task is RUNNING; return its worker's pid."""
    with trio.fail_after(20):
        async for info in tm.watch(task_id):
            if info.status is TaskStatus.RUNNING:
                assert info.worker_pid is not None
                return info.worker_pid
    raise AssertionError(f"{task_id} ended without running")


def test_status_values_are_lowercase() -> None:
    assert TaskStatus.RUNNING.value == "running"
    assert TaskStatus("running") is TaskStatus.RUNNING
    assert [s.value for s in TaskStatus] == ["pending", "running", "completed", "failed", "cancelled"]


async def test_error_of_a_cancelled_task(tasks: TaskManager) -> None:
    first = tasks.submit(slow_task, 30)
    second = tasks.submit(slow_task, 30)
    queued = tasks.submit(slow_task, 30)
    pid = await running(tasks, first)
    await running(tasks, second)
    assert await tasks.cancel(queued)
    assert (await tasks.info(queued)).error == "cancelled while queued"
    with trio.fail_after(20):
        assert await tasks.cancel(first)
    info = await tasks.info(first)
    assert info.error == f"cancelled by the caller; worker {pid} was killed"
    assert info.traceback is None
    with pytest.raises(TaskCancelled) as caught:
        await tasks.result(first)
    assert str(caught.value) == f"Task {first!r} was cancelled: cancelled by the caller; worker {pid} was killed"


async def test_error_of_tasks_cancelled_by_shutdown() -> None:
    tm = TaskManager(max_workers=1)
    await tm.startup()
    busy = tm.submit(slow_task, 30)
    queued = tm.submit(slow_task, 30)
    await running(tm, busy)
    with trio.fail_after(30):
        await tm.shutdown(wait=False)
    for task_id in (busy, queued):
        info = await tm.info(task_id)
        assert info.status is TaskStatus.CANCELLED
        assert info.error == "cancelled by shutdown"


async def test_error_and_traceback_of_a_job_that_raised(tasks: TaskManager) -> None:
    task_id = tasks.submit(failing_task)
    with trio.fail_after(20), pytest.raises(ValueError, match="Task failed intentionally"):
        await tasks.result(task_id)
    info = await tasks.info(task_id)
    assert info.error == "ValueError: Task failed intentionally"
    assert info.traceback is not None
    assert "in failing_task" in info.traceback
    assert 'raise ValueError("Task failed intentionally")' in info.traceback
