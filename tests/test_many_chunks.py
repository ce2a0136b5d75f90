"""tm.map with several items per task (``chunksize``), and its automatic chunk size (real worker processes)."""

from __future__ import annotations

import functools
import traceback
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from conftest import pid_gone, wait_until
from genro_tasks import TaskManager, TaskStatus, UnpicklableResult, WorkerCrashed, testing
from jobs_many_chunks import async_square, crash_at, fail_at, lock_at, nap, sleep_from, square


async def collect(it: AsyncIterator[int], into: list[int]) -> None:
    async for value in it:
        into.append(value)


async def consume(it: AsyncIterator[int]) -> None:
    async for _value in it:
        pass


async def test_chunks_yield_every_result_in_input_order_with_one_task_per_chunk(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        it = tasks.map(square, range(1000), chunksize=100)
        assert [v async for v in it] == [x * x for x in range(1000)]
    info = tasks.group_info(it.group)
    assert (info.total, info.completed) == (10, 10)
    assert {i.name for i in tasks.list_tasks() if i.group == it.group} == {"jobs_many_chunks.square[chunk]"}


async def test_unordered_chunks_yield_every_result(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        got = [v async for v in tasks.map(square, range(500), chunksize=7, ordered=False)]
    assert sorted(got) == [x * x for x in range(500)]


async def test_chunks_of_an_async_iterable(tasks: TaskManager) -> None:
    async def items() -> AsyncIterator[int]:
        for x in range(25):
            await trio.lowlevel.checkpoint()
            yield x

    with trio.fail_after(30):
        it = tasks.map(square, items(), chunksize=10)
        assert [v async for v in it] == [x * x for x in range(25)]
    assert tasks.group_info(it.group).total == 3


async def test_chunks_bound_the_items_in_flight(tasks: TaskManager) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        x = 0
        while True:
            pulled += 1
            yield x
            x += 1

    got = 0
    with trio.fail_after(30):
        async with tasks.map(square, endless(), max_in_flight=3, chunksize=10) as it:
            async for _value in it:
                got += 1
                assert pulled - got <= 3 * 10
                if got == 200:
                    break
    assert pulled <= 200 + 3 * 10


async def test_an_item_of_a_chunk_raises_at_its_position_with_its_remote_traceback(tasks: TaskManager) -> None:
    seen: list[int] = []
    it = tasks.map(functools.partial(fail_at, bad=5), range(20), chunksize=10)
    with trio.fail_after(30), pytest.raises(ValueError, match="item 5 is bad") as caught:
        await collect(it, seen)
    assert seen == [0, 1, 2, 3, 4]
    assert "in fail_at" in "".join(traceback.format_exception(caught.value))
    for info in tasks.list_tasks():
        if info.group == it.group:
            assert info.status.is_terminal
            assert testing.assigned_worker_pid(tasks, info.task_id) is None


async def test_chunk_return_exceptions_yields_each_error_in_place(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        got = [
            v async for v in tasks.map(functools.partial(fail_at, bad=3), range(8), chunksize=4, return_exceptions=True)
        ]
    assert got[:3] == [0, 1, 2]
    assert got[4:] == [4, 5, 6, 7]
    assert isinstance(got[3], ValueError)
    assert "item 3 is bad" in str(got[3])


async def test_an_unpicklable_value_fails_its_item_only(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        got = [
            v async for v in tasks.map(functools.partial(lock_at, bad=2), range(5), chunksize=5, return_exceptions=True)
        ]
    assert got[:2] == [0, 1]
    assert got[3:] == [3, 4]
    assert isinstance(got[2], UnpicklableResult)
    assert "item 2" in str(got[2])
    assert "lock" in str(got[2])


async def test_leaving_early_hard_cancels_running_and_queued_chunks(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        async with tasks.map(functools.partial(sleep_from, start=10), range(100), chunksize=10) as it:
            async for value in it:
                assert value == 0
                await wait_until(tasks, lambda: tasks.group_info(it.group).running == 2)
                break
    infos = [i for i in tasks.list_tasks() if i.group == it.group]
    assert [i.status for i in infos].count(TaskStatus.COMPLETED) == 1
    cancelled = [i for i in infos if i.status is TaskStatus.CANCELLED]
    assert len(cancelled) == len(infos) - 1 >= 2
    for info in cancelled:
        assert testing.assigned_worker_pid(tasks, info.task_id) is None
        if info.worker_pid is not None:
            assert pid_gone(info.worker_pid)


async def test_a_chunk_reports_the_fraction_of_its_items_done(tasks: TaskManager) -> None:
    it = tasks.map(functools.partial(sleep_from, start=1), range(4), chunksize=4)

    def progress() -> float | None:
        return next((g.progress for g in tasks.groups() if g.group == it.group), None)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, it)
            await wait_until(tasks, lambda: progress() == 0.25)  # item 0 of 4 done; item 1 sleeps
            nursery.cancel_scope.cancel()
    assert tasks.group_info(it.group).cancelled == 1


async def test_automatic_chunks_grow_for_trivial_items(tasks: TaskManager) -> None:
    with trio.fail_after(60):
        it = tasks.map(square, range(20_000))
        assert [v async for v in it] == [x * x for x in range(20_000)]
    assert it.chunksize > 100
    assert tasks.group_info(it.group).total < 2000


async def test_automatic_chunks_stay_one_item_per_task_for_slow_items(tasks: TaskManager) -> None:
    with trio.fail_after(60):
        it = tasks.map(nap, range(12))
        assert [v async for v in it] == list(range(12))
    assert it.chunksize == 1
    assert tasks.group_info(it.group).total == 12


@pytest.mark.parametrize("option", ["timeout", "retries"])
async def test_automatic_is_one_item_per_task_with_per_task_promises(tasks: TaskManager, option: str) -> None:
    view = tasks.options(timeout=30.0) if option == "timeout" else tasks.options(retries=1)
    with trio.fail_after(60):
        it = view.map(square, range(300))
        assert [v async for v in it] == [x * x for x in range(300)]
    assert tasks.group_info(it.group).total == 300


async def test_automatic_is_one_item_per_task_for_async_functions(tasks: TaskManager) -> None:
    with trio.fail_after(60):
        it = tasks.map(async_square, range(30))
        assert [v async for v in it] == [x * x for x in range(30)]
    assert tasks.group_info(it.group).total == 30


async def test_chunksize_is_checked_at_the_call(tasks: TaskManager) -> None:
    for bad in (0, -1, True, 2.0, "3"):
        with pytest.raises(ValueError, match=r"map\(chunksize=\.\.\.\) must be a positive int or None"):
            tasks.map(square, range(3), chunksize=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"chunksize=4.*retries=2.*pass chunksize=1"):
        tasks.map(square, range(3), chunksize=4, retries=2)
    with pytest.raises(ValueError, match=r"chunksize=4.*async def.*pass chunksize=1"):
        tasks.map(async_square, range(3), chunksize=4)


async def test_one_item_per_task_keeps_a_deep_window_by_default(tasks: TaskManager) -> None:
    # Trivial items one per task starve two workers behind a window of 4 x max_workers (issue 17 item 5).
    with trio.fail_after(30):
        async with tasks.map(square, range(10_000), chunksize=1) as it:
            async for _value in it:
                break
            assert tasks.group_info(it.group).total == 64 * tasks.max_workers


async def test_a_chunk_that_crashes_fails_each_of_its_items(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        got = [
            v
            async for v in tasks.map(functools.partial(crash_at, bad=2), range(10), chunksize=5, return_exceptions=True)
        ]
    assert all(isinstance(v, WorkerCrashed) for v in got[:5]), got
    assert got[5:] == [5, 6, 7, 8, 9]
