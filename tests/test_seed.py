"""The seed block's tests/test_tasks.py, ported to genro_tasks and trio.

One expectation changed, as the design asks: right after ``submit`` a task
may be PENDING; it becomes RUNNING only once a worker starts the job. The
seed's racy cancel test is now exact: cancelling a running task kills it.
"""

from __future__ import annotations

import pytest
import trio

from conftest import wait_status
from genro_tasks import ManagerClosed, TaskInfo, TaskManager, TaskStatus
from jobs import failing_task, simple_task, slow_task


async def test_startup_shutdown() -> None:
    tm = TaskManager()
    assert not tm.is_running
    with trio.fail_after(30):
        await tm.startup()
        running: bool = tm.is_running
        assert running
        await tm.shutdown()
    assert not tm.is_running


async def test_submit_and_result(tasks: TaskManager) -> None:
    task_id = tasks.submit(simple_task, 5)
    assert task_id is not None
    with trio.fail_after(20):
        assert await tasks.result(task_id) == 10


async def test_submit_with_custom_id(tasks: TaskManager) -> None:
    task_id = tasks.submit(simple_task, 3, task_id="my-task-123")
    assert task_id == "my-task-123"
    with trio.fail_after(20):
        assert await tasks.result(task_id) == 6


async def test_submit_with_metadata(tasks: TaskManager) -> None:
    task_id = tasks.submit(simple_task, 1, metadata={"user_id": 42, "type": "export"})
    info = await tasks.info(task_id)
    assert info.metadata["user_id"] == 42
    assert info.metadata["type"] == "export"


async def test_status_tracking(tasks: TaskManager) -> None:
    task_id = tasks.submit(slow_task, 0.2)
    # Changed from the seed: PENDING until a worker has really started it.
    assert await tasks.status(task_id) in (TaskStatus.PENDING, TaskStatus.RUNNING)
    await wait_status(tasks, task_id, TaskStatus.RUNNING)
    assert await tasks.status(task_id) == TaskStatus.RUNNING
    with trio.fail_after(20):
        await tasks.result(task_id)
    assert await tasks.status(task_id) == TaskStatus.COMPLETED


async def test_info(tasks: TaskManager) -> None:
    task_id = tasks.submit(simple_task, 1)
    with trio.fail_after(20):
        await tasks.result(task_id)
    info = await tasks.info(task_id)
    assert isinstance(info, TaskInfo)
    assert info.task_id == task_id
    assert info.status == TaskStatus.COMPLETED
    assert info.created_at is not None
    assert info.started_at is not None
    assert info.completed_at is not None
    assert info.created_at <= info.started_at <= info.completed_at
    assert info.error is None
    assert info.name == "jobs.simple_task"
    assert isinstance(info.worker_pid, int)


async def test_failed_task(tasks: TaskManager) -> None:
    task_id = tasks.submit(failing_task)
    with trio.fail_after(20), pytest.raises(ValueError, match="Task failed"):
        await tasks.result(task_id)
    info = await tasks.info(task_id)
    assert info.status == TaskStatus.FAILED
    assert info.error is not None
    assert "Task failed" in info.error


async def test_result_timeout(tasks: TaskManager) -> None:
    task_id = tasks.submit(slow_task, 1.0)
    with pytest.raises(TimeoutError):
        await tasks.result(task_id, timeout=0.1)
    # The task itself is left alone.
    assert await tasks.status(task_id) in (TaskStatus.PENDING, TaskStatus.RUNNING)


async def test_task_not_found(tasks: TaskManager) -> None:
    with pytest.raises(KeyError, match="not found"):
        await tasks.status("nonexistent-task")
    with pytest.raises(KeyError, match="not found"):
        await tasks.result("nonexistent-task")
    with pytest.raises(KeyError, match="Task not found: nonexistent-task"):
        await tasks.info("nonexistent-task")
    with pytest.raises(KeyError, match="not found"):
        await tasks.cancel("nonexistent-task")


async def test_list_tasks(tasks: TaskManager) -> None:
    tasks.submit(simple_task, 1, task_id="task-1")
    tasks.submit(simple_task, 2, task_id="task-2")
    tasks.submit(simple_task, 3, task_id="task-3")
    all_tasks = tasks.list_tasks()
    assert len(all_tasks) == 3
    assert {t.task_id for t in all_tasks} == {"task-1", "task-2", "task-3"}


async def test_list_tasks_filtered(tasks: TaskManager) -> None:
    tasks.submit(simple_task, 1, task_id="quick-1")
    tasks.submit(slow_task, 0.5, task_id="slow-1")
    with trio.fail_after(20):
        await tasks.result("quick-1")
    completed = tasks.list_tasks(status=TaskStatus.COMPLETED)
    assert len(completed) == 1
    assert completed[0].task_id == "quick-1"


async def test_clear_completed(tasks: TaskManager) -> None:
    tasks.submit(simple_task, 1, task_id="task-1")
    tasks.submit(simple_task, 2, task_id="task-2")
    with trio.fail_after(20):
        await tasks.result("task-1")
        await tasks.result("task-2")
    assert tasks.clear_completed() == 2
    assert len(tasks.list_tasks()) == 0


async def test_cancel_task(tasks: TaskManager) -> None:
    task_id = tasks.submit(slow_task, 5.0)
    await wait_status(tasks, task_id, TaskStatus.RUNNING)
    with trio.fail_after(20):
        assert await tasks.cancel(task_id) is True
    assert await tasks.status(task_id) == TaskStatus.CANCELLED


async def test_not_started_error() -> None:
    tm = TaskManager()
    with pytest.raises(RuntimeError, match="not started"):
        tm.submit(simple_task, 1)
    with pytest.raises(ManagerClosed):
        tm.submit(simple_task, 1)
