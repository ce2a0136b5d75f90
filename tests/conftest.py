from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import trio

from genro_tasks import TaskManager, TaskStatus, testing


@pytest.fixture
async def tasks() -> AsyncIterator[TaskManager]:
    """A started manager with two workers, killed at teardown."""
    tm = TaskManager(max_workers=2)
    await tm.startup()
    yield tm
    with trio.fail_after(30):
        await tm.shutdown(wait=False)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray for the module's Ray tests (a RayBackend uses the Ray this process joined)."""
    from ray_helpers import local_ray

    with local_ray(tmp_path_factory.mktemp("ray")):
        yield


@pytest.fixture
async def ray_tm() -> AsyncIterator[TaskManager]:
    """A started manager on the Ray this process joined (use with ``local_ray``), killed at teardown."""
    from ray_helpers import ray_manager

    async with ray_manager() as tm:
        yield tm


async def wait_until(tm: TaskManager, predicate: Callable[[], bool], timeout: float = 20) -> None:
    """Wait, on the manager's change notifications, until ``predicate()`` holds."""
    with trio.fail_after(timeout):
        await testing.wait_until(tm, predicate)


async def wait_status(tm: TaskManager, task_id: str, status: TaskStatus, timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        await testing.wait_for_status(tm, task_id, status)


def statuses(tm: TaskManager, ids: list[str]) -> list[TaskStatus]:
    return [testing.status(tm, i) for i in ids]


def pid_gone(pid: int) -> bool:
    """True if ``pid`` has exited (a zombie counts as exited, and so does one being reaped).

    While its parent reaps it, a process reads as ``X`` (dead) for an instant before its
    /proc entry goes: a check made then must not call it alive.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # ProcessLookupError: reaped between open and read
        return True


async def wait_pids_gone(pids: list[int], limit: float) -> None:
    """Wait until every pid has exited, woken by pidfds (no polling)."""
    with trio.fail_after(limit):
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                await trio.lowlevel.wait_readable(fd)
            finally:
                os.close(fd)
