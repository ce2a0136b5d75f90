"""Many tasks at once: tm.map, as_completed, gather and groups (real worker processes)."""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

import pytest
import trio

from conftest import pid_gone, wait_status, wait_until
from genro_tasks import TaskCancelled, TaskInfo, TaskManager, TaskStatus, testing
from jobs_many import fail_at, first_quick, progress_then_sleep, sleep_forever, square, zero_one_then_sleep


def batch(tm: TaskManager, group: str) -> list[TaskInfo]:
    return [info for info in tm.list_tasks() if info.group == group]


def settled_by_cancel(tm: TaskManager, group: str) -> None:
    """Every task of the batch that did not complete is CANCELLED, and no worker holds one."""
    infos = batch(tm, group)
    assert infos
    for info in infos:
        assert info.status in (TaskStatus.COMPLETED, TaskStatus.CANCELLED), info
        assert testing.assigned_worker_pid(tm, info.task_id) is None
        if info.status is TaskStatus.CANCELLED and info.worker_pid is not None:
            assert pid_gone(info.worker_pid)
    assert any(info.status is TaskStatus.CANCELLED for info in infos)


async def collect(it: AsyncIterator[int], into: list[int]) -> None:
    async for value in it:
        into.append(value)


async def raise_in_loop_body(tm: TaskManager, group: str) -> None:
    async for _value in tm.map(first_quick, range(10), group=group):
        await wait_until(tm, lambda: tm.group_info(group).running == 2)
        raise KeyError("stop")


# ---------------------------------------------------------------------- map
async def test_map_yields_results_in_input_order(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        results = [value async for value in tasks.map(square, range(40))]
    assert results == [x * x for x in range(40)]


async def test_map_unordered_yields_every_result(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        async with tasks.map(square, range(40), ordered=False) as it:
            results = [value async for value in it]
    assert sorted(results) == [x * x for x in range(40)]


async def test_map_takes_an_async_iterable(tasks: TaskManager) -> None:
    async def items() -> AsyncIterator[int]:
        for x in range(5):
            await trio.lowlevel.checkpoint()
            yield x

    with trio.fail_after(30):
        assert [v async for v in tasks.map(square, items())] == [0, 1, 4, 9, 16]


async def test_map_submits_lazily_with_bounded_in_flight(tasks: TaskManager) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for x in itertools.count():
            pulled += 1
            yield x

    got = 0
    with trio.fail_after(30):
        async with tasks.map(square, endless(), max_in_flight=5, chunksize=1) as it:
            async for _value in it:
                got += 1
                # Never more than max_in_flight submitted and not yet yielded.
                assert pulled - got <= 5 - 1
                assert tasks.group_info(it.group).total == pulled
                if got == 50:
                    break
    assert pulled <= 50 + 5


async def test_map_failed_item_raises_at_its_position_and_cancels_the_rest(tasks: TaskManager) -> None:
    seen: list[int] = []
    it = tasks.map(zero_one_then_sleep, range(6), max_in_flight=6)
    with trio.fail_after(30), pytest.raises(ValueError, match="item 1 is bad"):
        await collect(it, seen)
    assert seen == [0]
    # Before the error reached us, the rest of the batch was killed and recorded.
    settled = batch(tasks, it.group)
    assert [i.status for i in settled].count(TaskStatus.FAILED) == 1
    assert all(i.status is not TaskStatus.RUNNING and i.status is not TaskStatus.PENDING for i in settled)
    settled_by_cancel_or_failed(tasks, it.group)


async def test_map_return_exceptions_yields_the_error_in_place(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        results = [v async for v in tasks.map(functools.partial(fail_at, bad=2), range(4), return_exceptions=True)]
    assert results[:2] == [0, 1]
    assert results[3] == 3
    assert isinstance(results[2], ValueError)
    assert "item 2 is bad" in str(results[2])


def settled_by_cancel_or_failed(tm: TaskManager, group: str) -> None:
    for info in batch(tm, group):
        assert info.status.is_terminal, info
        assert testing.assigned_worker_pid(tm, info.task_id) is None
        if info.status is TaskStatus.CANCELLED and info.worker_pid is not None:
            assert pid_gone(info.worker_pid)


async def test_map_break_in_async_with_cancels_the_batch_before_the_block_ends(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        async with tasks.map(first_quick, range(10)) as it:
            async for value in it:
                assert value == 0
                await wait_until(tasks, lambda: tasks.group_info(it.group).running == 2)
                break
    settled_by_cancel(tasks, it.group)
    assert tasks.group_info(it.group).total == 8  # max_in_flight is 4 x 2 workers: 8 and 9 never submitted
    assert tasks.group_info(it.group).cancelled == 7


async def test_map_bare_break_kills_the_batch_at_once(tasks: TaskManager) -> None:
    group = "bare-break"
    with trio.fail_after(30):
        async for value in tasks.map(first_quick, range(10), group=group):
            assert value == 0
            await wait_until(tasks, lambda: tasks.group_info(group).running == 2)
            break
        # The iterator was dropped at the break: its finaliser asked for the kills synchronously.
        for info in batch(tasks, group):
            # Queued ones are CANCELLED already; the ones handed to a worker are being killed.
            assert info.status.is_terminal or testing.kill_requested(tasks, info.task_id), info
        await wait_until(tasks, lambda: tasks.group_info(group).is_finished)
    settled_by_cancel(tasks, group)


async def test_map_exception_in_the_loop_body_kills_the_batch(tasks: TaskManager) -> None:
    group = "body-raises"
    with trio.fail_after(30):
        with pytest.raises(KeyError, match="stop"):
            await raise_in_loop_body(tasks, group)
        for info in batch(tasks, group):
            assert info.status.is_terminal or testing.kill_requested(tasks, info.task_id), info
        await wait_until(tasks, lambda: tasks.group_info(group).is_finished)
    settled_by_cancel(tasks, group)


async def test_map_cancel_scope_cancels_the_batch_before_the_scope_exits(tasks: TaskManager) -> None:
    group = "scope"
    with trio.fail_after(30):
        with trio.CancelScope() as scope:
            async for _value in tasks.map(first_quick, range(10), group=group):
                await wait_until(tasks, lambda: tasks.group_info(group).running == 2)
                scope.cancel()
        assert scope.cancelled_caught
    settled_by_cancel(tasks, group)


async def test_map_aclose_cancels_the_batch(tasks: TaskManager) -> None:
    it = tasks.map(first_quick, range(10))
    with trio.fail_after(30):
        assert await it.__anext__() == 0
        await wait_until(tasks, lambda: tasks.group_info(it.group).running == 2)
        await it.aclose()
        settled_by_cancel(tasks, it.group)
        with pytest.raises(StopAsyncIteration):
            await it.__anext__()
        await it.aclose()  # again: nothing


async def test_map_checks_its_arguments_at_the_call(tasks: TaskManager) -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        tasks.map(square, [1], max_in_flight=0)
    with pytest.raises(TypeError, match="iterable"):
        tasks.map(square, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retries"):
        tasks.map(square, [1], retries=-1)
    with pytest.raises(TypeError, match="ordered"):
        tasks.map(square, [1], ordered=None)  # type: ignore[arg-type]


async def test_map_through_an_options_view(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        it = tasks.options(priority=3, group="view").map(square, range(3))
        assert it.group == "view"
        assert [v async for v in it] == [0, 1, 4]
    assert {i.priority for i in batch(tasks, "view")} == {3}


# ------------------------------------------------------- as_completed, gather
async def test_as_completed_yields_tasks_as_they_finish(tasks: TaskManager) -> None:
    slow = tasks.submit(sleep_forever)
    quick = tasks.submit(square, 3)
    with trio.fail_after(30):
        it = tasks.as_completed([slow, quick, quick])
        first = await it.__anext__()
        assert (first.task_id, first.status) == (quick, TaskStatus.COMPLETED)
        await tasks.cancel(slow)
        second = await it.__anext__()
        assert (second.task_id, second.status) == (slow, TaskStatus.CANCELLED)
        with pytest.raises(StopAsyncIteration):
            await it.__anext__()


async def test_as_completed_checks_ids(tasks: TaskManager) -> None:
    with pytest.raises(KeyError, match="Task not found: nope"):
        tasks.as_completed(["nope"])
    with pytest.raises(TypeError, match="iterable of task ids"):
        tasks.as_completed("abc")


async def test_gather_returns_results_in_order(tasks: TaskManager) -> None:
    ids = [tasks.submit(square, x) for x in range(5)]
    with trio.fail_after(30):
        assert await tasks.gather(ids) == [0, 1, 4, 9, 16]
        assert await tasks.gather([*ids[:2], ids[0]]) == [0, 1, 0]


async def test_gather_raises_the_first_failure_without_waiting_for_the_rest(tasks: TaskManager) -> None:
    slow = tasks.submit(sleep_forever)
    with trio.fail_after(30):
        await wait_status(tasks, slow, TaskStatus.RUNNING)
        bad = tasks.submit(fail_at, 1, bad=1)
        with pytest.raises(ValueError, match="item 1 is bad"):
            await tasks.gather([slow, bad])
    assert await tasks.status(slow) is TaskStatus.RUNNING  # left alone


async def test_gather_return_exceptions(tasks: TaskManager) -> None:
    ok = tasks.submit(square, 2)
    bad = tasks.submit(fail_at, 1, bad=1)
    gone = tasks.submit(sleep_forever)
    with trio.fail_after(30):
        await wait_status(tasks, gone, TaskStatus.RUNNING)
        await tasks.cancel(gone)
        results = await tasks.gather([ok, bad, gone], return_exceptions=True)
    assert results[0] == 4
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], TaskCancelled)


# ------------------------------------------------------------------- groups
async def test_group_info_counts_and_aggregate_progress(tasks: TaskManager) -> None:
    g = tasks.options(group="reports")
    done = g.submit(square, 2)
    half = g.submit(progress_then_sleep, 0.5)
    blocked = g.submit(sleep_forever)
    queued = g.submit(sleep_forever)
    with trio.fail_after(30):
        await wait_until(
            tasks,
            lambda: (
                testing.status(tasks, done) is TaskStatus.COMPLETED
                and testing.snapshot(tasks, half).progress == 0.5
                and testing.status(tasks, blocked) is TaskStatus.RUNNING
            ),
        )
        info = tasks.group_info("reports")
        assert (info.total, info.pending, info.running, info.completed) == (4, 1, 2, 1)
        assert info.progress == pytest.approx((1 + 0.5 + 0 + 0) / 4)
        assert info.eta is not None
        assert info.eta >= 0
        assert [g.group for g in tasks.groups()] == ["reports"]
        assert (await tasks.info(queued)).group == "reports"
        assert await tasks.cancel_group("reports") == 3
    info = tasks.group_info("reports")
    assert (info.total, info.completed, info.cancelled, info.pending, info.running) == (4, 1, 3, 0, 0)
    assert info.progress == 1.0
    assert info.eta == 0.0
    assert info.is_finished


async def test_group_info_of_an_unknown_group(tasks: TaskManager) -> None:
    with pytest.raises(KeyError, match="Group not found: nope"):
        tasks.group_info("nope")
    with pytest.raises(KeyError, match="Group not found"):
        await tasks.cancel_group("nope")
    with pytest.raises(ValueError, match="group must be a non-empty str"):
        tasks.options(group="")


async def test_map_group_shows_the_batch_progress(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        async with tasks.map(square, range(10), chunksize=1) as it:  # one task per item
            assert it.group.startswith("map-")
            results = [v async for v in it]
    assert len(results) == 10
    info = tasks.group_info(it.group)
    assert (info.total, info.completed, info.progress) == (10, 10, 1.0)


async def test_map_waits_for_room_under_max_queued() -> None:
    async with TaskManager(max_workers=1, max_queued=2) as tm:
        with trio.fail_after(30):
            assert [v async for v in tm.map(square, range(10), max_in_flight=8)] == [x * x for x in range(10)]


@pytest.mark.parametrize("source", ["iterable", "async-iterable"])
async def test_a_huge_max_in_flight_over_an_endless_input_does_not_hold_the_event_loop(
    tasks: TaskManager, source: str
) -> None:
    """max_in_flight bounds what is in flight, not how long one fill may keep other tasks waiting."""
    pulled = 0
    pulled_at_tick = 0
    ticks = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for x in itertools.count():
            if pulled - pulled_at_tick > 50_000:  # (before: the first fill never ended)
                raise AssertionError(f"{pulled - pulled_at_tick} items were submitted without a schedule point")
            pulled += 1
            yield x

    async def endless_async() -> AsyncGenerator[int]:
        for x in endless():  # never awaits: it is the map that must let other tasks run
            yield x

    async def ticker() -> None:
        nonlocal pulled_at_tick, ticks
        while True:
            pulled_at_tick = pulled
            ticks += 1
            await trio.lowlevel.checkpoint()

    got = 0
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, contextlib.aclosing(endless_async()) as async_items:
            nursery.start_soon(ticker)
            items = endless() if source == "iterable" else async_items
            async with tasks.map(square, items, max_in_flight=10**9, chunksize=1) as it:
                async for value in it:
                    assert value == got * got
                    got += 1
                    if got == 10:
                        break
            nursery.cancel_scope.cancel()
    assert ticks > 10
    # Every task of the batch not yielded was cancelled on leaving; none is left queued.
    group = tasks.group_info(it.group)
    assert (group.pending, group.running) == (0, 0)
