"""Status tells the truth: PENDING until a worker starts the job."""

from __future__ import annotations

import pytest
import trio

from conftest import statuses, wait_until
from genro_tasks import TaskManager, TaskStatus, testing
from jobs import announce_and_sleep, simple_task, slow_task


async def test_six_slow_tasks_on_two_workers(tasks: TaskManager) -> None:
    ids = [tasks.submit(slow_task, 30) for _ in range(6)]
    await wait_until(tasks, lambda: statuses(tasks, ids).count(TaskStatus.RUNNING) == 2)
    assert statuses(tasks, ids) == [TaskStatus.RUNNING] * 2 + [TaskStatus.PENDING] * 4
    assert len(tasks.list_tasks(status=TaskStatus.RUNNING)) == 2
    assert len(tasks.list_tasks(status=TaskStatus.PENDING)) == 4
    infos = [await tasks.info(i) for i in ids]
    assert all(i.started_at is None and i.worker_pid is None for i in infos[2:])
    assert len({i.worker_pid for i in infos[:2]}) == 2


async def test_running_has_started_at_and_pid(tasks: TaskManager) -> None:
    tid = tasks.submit(announce_and_sleep)
    await wait_until(tasks, lambda: testing.snapshot(tasks, tid).progress_message is not None)
    info = await tasks.info(tid)
    assert info.status is TaskStatus.RUNNING
    assert info.started_at is not None
    # The pid the task reports is the pid of the process really running it.
    assert info.progress_message == f"pid={info.worker_pid}"


async def test_info_is_a_snapshot(tasks: TaskManager) -> None:
    meta = {"k": [1]}
    tid = tasks.submit(slow_task, 0.1, metadata=meta)
    before = await tasks.info(tid)
    meta["k"] = [2]
    with trio.fail_after(20):
        await tasks.result(tid)
    assert before.status is TaskStatus.PENDING or before.status is TaskStatus.RUNNING
    assert before.completed_at is None
    assert before.metadata == {"k": [1]}
    with pytest.raises(AttributeError):
        before.status = TaskStatus.FAILED  # type: ignore[misc]
    after = await tasks.info(tid)
    assert after.status is TaskStatus.COMPLETED


async def test_fifo_dispatch_and_capacity(tasks: TaskManager) -> None:
    ids = [tasks.submit(simple_task, i) for i in range(200)]
    with trio.fail_after(30):
        results = [await tasks.result(i) for i in ids]
    assert results == [2 * i for i in range(200)]
    infos = tasks.list_tasks()
    assert all(i.status is TaskStatus.COMPLETED for i in infos)
    starts = [i.started_at for i in infos]
    assert all(s is not None for s in starts)
    assert len({i.worker_pid for i in infos}) <= 2


async def test_max_workers_default_is_cpu_count() -> None:
    import os

    assert TaskManager().max_workers == (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="max_workers"):
        TaskManager(0)
