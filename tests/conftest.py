from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import trio

from genro_tasks import TaskManager, TaskStatus


@pytest.fixture
async def tasks() -> AsyncIterator[TaskManager]:
    """A started manager with two workers, killed at teardown."""
    tm = TaskManager(max_workers=2)
    await tm.startup()
    yield tm
    with trio.fail_after(30):
        await tm.shutdown(wait=False)


async def wait_until(tm: TaskManager, predicate: Callable[[], bool], timeout: float = 20) -> None:
    """Wait, on the manager's change notifications, until ``predicate()`` holds."""
    with trio.fail_after(timeout):
        while not predicate():
            await tm._wait_change()


async def wait_status(tm: TaskManager, task_id: str, status: TaskStatus, timeout: float = 20) -> None:
    rec = tm._records[task_id]
    await wait_until(tm, lambda: rec.status is status, timeout)


def statuses(tm: TaskManager, ids: list[str]) -> list[TaskStatus]:
    return [tm._records[i].status for i in ids]
