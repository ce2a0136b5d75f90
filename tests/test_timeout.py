"""Per-task timeouts count running time and kill the worker."""

from __future__ import annotations

import pytest
import trio

from conftest import statuses, wait_until
from genro_tasks import TaskManager, TaskStatus, TaskTimeout
from jobs import simple_task, slow_task


async def test_timeout_kills_and_fails(tasks: TaskManager) -> None:
    tid = tasks.options(timeout=0.3).submit(slow_task, 60)
    with trio.fail_after(20), pytest.raises(TaskTimeout, match=r"exceeded its timeout of 0\.3s") as info:
        await tasks.result(tid)
    assert isinstance(info.value, TimeoutError)
    record = await tasks.info(tid)
    assert record.status is TaskStatus.FAILED
    assert record.started_at is not None
    assert record.completed_at is not None
    assert (record.completed_at - record.started_at).total_seconds() >= 0.3
    assert record.timeout == 0.3
    with trio.fail_after(20):
        assert await tasks.run(simple_task, 2) == 4


async def test_timeout_clock_starts_at_running(tasks: TaskManager) -> None:
    blockers = [tasks.submit(slow_task, 0.6) for _ in range(2)]
    # Queued behind the blockers for ~0.6 s, runs for ~0.1 s: must not time out.
    tid = tasks.options(timeout=0.4).submit(slow_task, 0.1)
    await wait_until(tasks, lambda: statuses(tasks, blockers) == [TaskStatus.RUNNING] * 2)
    with trio.fail_after(20):
        assert await tasks.result(tid) == "done"
        assert [await tasks.result(b) for b in blockers] == ["done", "done"]


async def test_fast_task_with_timeout_completes(tasks: TaskManager) -> None:
    ids = [tasks.options(timeout=5).submit(simple_task, i) for i in range(20)]
    with trio.fail_after(20):
        assert [await tasks.result(i) for i in ids] == [2 * i for i in range(20)]
