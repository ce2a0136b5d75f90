"""The many-jobs API and the task options, attacked as a demanding new user would (real worker processes)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from conftest import pid_gone, wait_until
from genro_tasks import TaskCancelled, TaskInfo, TaskManager, TaskStatus, TaskWatcher, testing
from genro_tasks_worker._protocol import DONE_ERROR
from jobs_attack_api import stop_then_raise_large
from jobs_many import sleep_forever, square
from test_attack_kill import hold_mid_frame, only_worker, stopped


async def completed_again(tm: TaskManager, task_id: str) -> None:
    """Requeue a finished task and wait until its second attempt is COMPLETED."""
    await tm.requeue(task_id)
    await wait_until(
        tm,
        lambda: any(
            i.task_id == task_id and i.attempt == 2 and i.status is TaskStatus.COMPLETED for i in tm.list_tasks()
        ),
    )


# ------------------------------------------------ a followed task that ends twice (requeue)
async def test_as_completed_yields_a_requeued_task_once_and_still_waits_for_the_others(tasks: TaskManager) -> None:
    quick = tasks.submit(square, 3)
    slow = tasks.submit(sleep_forever)
    got: list[TaskInfo] = []
    with trio.fail_after(30):
        it = tasks.as_completed([quick, slow])  # both unfinished: both followed
        got.append(await it.__anext__())
        assert got[0].task_id == quick
        await completed_again(tasks, quick)  # the operator runs it again: it ends a second time
        await tasks.cancel(slow)
        got.extend([info async for info in it])
    assert [(info.task_id, info.status) for info in got] == [
        (quick, TaskStatus.COMPLETED),
        (slow, TaskStatus.CANCELLED),
    ]


async def test_gather_waits_for_every_task_when_one_is_requeued_meanwhile(tasks: TaskManager) -> None:
    quick = tasks.submit(square, 3)
    slow = tasks.submit(sleep_forever)
    outcome: list[object] = []

    async def gather() -> None:
        outcome.append(await tasks.gather([quick, slow], return_exceptions=True))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gather)
            await wait_until(tasks, lambda: testing.status(tasks, quick) is TaskStatus.COMPLETED)
            await completed_again(tasks, quick)
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == []  # the slow task has not ended: gather still waits
            await tasks.cancel(slow)
    [results] = outcome
    assert isinstance(results, list)
    assert results[0] == 9
    assert isinstance(results[1], TaskCancelled)


# ------------------------------------------------------------------------- options at the call
async def test_map_refuses_a_chunksize_too_large_at_the_call(tasks: TaskManager) -> None:
    with pytest.raises(ValueError, match=r"chunksize"):
        tasks.map(square, [1, 2], chunksize=sys.maxsize + 1)
    with trio.fail_after(30):  # the largest accepted one runs
        assert [v async for v in tasks.map(square, [1, 2], chunksize=sys.maxsize)] == [1, 4]


@pytest.mark.parametrize("initargs", ["abc", b"ab", {"a": 1}])
def test_initargs_that_are_not_a_tuple_of_arguments_are_refused(initargs: object) -> None:
    with pytest.raises(TypeError, match=r"initargs must be a tuple"):
        TaskManager(1, initializer=square, initargs=initargs)  # type: ignore[arg-type]


# ------------------------------------------------------------ several readers of one live view
async def test_as_completed_shared_by_two_readers_ends_for_both(tasks: TaskManager) -> None:
    a = tasks.submit(sleep_forever)
    b = tasks.submit(sleep_forever)
    it = tasks.as_completed([a, b])
    seen: list[str] = []

    async def reader() -> None:
        async for info in it:
            seen.append(info.task_id)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()  # both readers wait
            await tasks.cancel(a)
            await tasks.cancel(b)
    assert sorted(seen) == sorted([a, b])


async def test_change_stream_shared_by_two_readers_ends_for_both_when_closed(tasks: TaskManager) -> None:
    ended: list[int] = []

    async def reader(stream: object, n: int) -> None:
        async for _info in stream:  # type: ignore[attr-defined]
            pass
        ended.append(n)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, tasks.open_change_stream() as stream:
            nursery.start_soon(reader, stream, 1)
            nursery.start_soon(reader, stream, 2)
            await trio.testing.wait_all_tasks_blocked()
    assert sorted(ended) == [1, 2]


async def _read_a_watch_until(
    tasks: TaskManager, readers: int, end: Callable[[str, TaskWatcher], Awaitable[object]]
) -> tuple[str, list[TaskStatus]]:
    """``readers`` trio tasks read one watcher of a running task until ``end(task_id, watcher)``; what they saw."""
    task_id = tasks.submit(sleep_forever)
    await wait_until(tasks, lambda: testing.status(tasks, task_id) is TaskStatus.RUNNING)
    watcher = tasks.watch(task_id)
    seen: list[TaskStatus] = []

    async def reader() -> None:
        async for info in watcher:
            seen.append(info.status)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(readers):
                nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()  # each read the RUNNING snapshot and waits for more
            await end(task_id, watcher)
    return task_id, seen


async def test_watch_closed_while_a_reader_waits_ends_that_reader(tasks: TaskManager) -> None:
    task_id, seen = await _read_a_watch_until(tasks, 1, lambda _task_id, watcher: watcher.aclose())
    assert seen == [TaskStatus.RUNNING]
    assert testing.status(tasks, task_id) is TaskStatus.RUNNING  # closing the view leaves the task alone


async def test_watch_shared_by_two_readers_ends_for_both(tasks: TaskManager) -> None:
    _task_id, seen = await _read_a_watch_until(tasks, 2, lambda task_id, _watcher: tasks.cancel(task_id))
    assert seen == [TaskStatus.RUNNING, TaskStatus.CANCELLED]


# ------------------------------------------------------------------------ a retry racing a cancel
async def test_a_cancel_racing_a_failure_that_would_be_retried_stops_the_retries(tmp_path: Path) -> None:
    """The attempt has failed and its (32 MiB) error is half-way through the pipe when the cancel comes.

    The cancel waits for the error (the attempt ended on its own), and then no further attempt may
    start: the caller asked the task to stop. The task ends FAILED with that error, as it would
    without retries, and ``cancel`` returns False.
    """
    size, marker = 32 << 20, tmp_path / "raising"
    async with TaskManager(1) as tm:
        with trio.fail_after(20):
            pid = await tm.run(os.getpid)
        worker = only_worker(tm)
        tid = tm.options(retries=3, retry_backoff=0).submit(stop_then_raise_large, str(marker), size)
        try:
            with trio.fail_after(20):
                while not (marker.exists() and stopped(pid)):  # noqa: ASYNC110 - another process: look every 5 ms
                    await trio.sleep(0.005)
            await hold_mid_frame(worker, pid, DONE_ERROR)  # the parent holds part of the error
            async with trio.open_nursery() as nursery:
                cancelled: list[bool] = []

                async def cancel() -> None:
                    cancelled.append(await tm.cancel(tid))

                nursery.start_soon(cancel)
                await trio.testing.wait_all_tasks_blocked()
                assert testing.kill_requested(tm, tid)
                os.kill(pid, signal.SIGCONT)  # the error arrives in full
                with trio.fail_after(10):
                    await wait_until(tm, lambda: testing.status(tm, tid).is_terminal)
        finally:
            if not pid_gone(pid):
                os.kill(pid, signal.SIGCONT)
        info = await tm.info(tid)
        assert (info.status, info.attempt, cancelled) == (TaskStatus.FAILED, 1, [False])
        with pytest.raises(ValueError, match=r"eeee"):
            await tm.result(tid)


# ------------------------------------------------------------------- tm.map and an operator's requeue
async def test_unordered_map_item_requeued_before_it_is_yielded_yields_its_new_attempt(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        async with tasks.map(square, [1, 2], ordered=False, chunksize=1) as it:
            first = await it.__anext__()
            group = it.group
            await wait_until(tasks, lambda: tasks.group_info(group).completed == 2)
            ids = [info.task_id for info in tasks.list_tasks() if info.group == group]
            [other] = [task_id for task_id in ids if await tasks.result(task_id) != first]
            await tasks.requeue(other)  # finished, not yielded yet: the operator runs it again
            rest = [value async for value in it]
    assert sorted([first, *rest]) == [1, 4]
    info = await tasks.info(other)
    assert (info.status, info.attempt) == (TaskStatus.COMPLETED, 2)
