"""Progress reported from inside jobs, and live watching."""

from __future__ import annotations

import gc
import math
import tracemalloc

import pytest
import trio

from conftest import wait_status, wait_until
from genro_tasks import TaskInfo, TaskManager, TaskStatus, report_progress, testing
from jobs import (
    bad_progress,
    progress_and_block,
    progress_flood,
    progress_steps,
    progress_then_return,
    simple_task,
    slow_task,
)


def test_report_progress_outside_a_task_is_a_noop() -> None:
    report_progress(0.5, "nothing happens")
    report_progress()
    assert progress_then_return() == "ok"


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf, "half", True])
def test_report_progress_validates(value: object) -> None:
    with pytest.raises(ValueError, match="fraction"):
        report_progress(value)  # type: ignore[arg-type]


async def test_bad_fraction_fails_the_job(tasks: TaskManager) -> None:
    with trio.fail_after(20), pytest.raises(ValueError, match="fraction must be"):
        await tasks.run(bad_progress, 2.0)


async def test_last_value_recorded_before_completed(tasks: TaskManager) -> None:
    tid = tasks.submit(progress_then_return)
    with trio.fail_after(20):
        assert await tasks.result(tid) == "ok"
    info = await tasks.info(tid)
    assert info.status is TaskStatus.COMPLETED
    assert info.progress == 1.0
    assert info.progress_message == "finished"


async def test_partial_updates_merge(tasks: TaskManager) -> None:
    tid = tasks.submit(progress_and_block, 30)
    await wait_until(tasks, lambda: testing.snapshot(tasks, tid).progress_message == "started")
    info = await tasks.info(tid)
    assert info.status is TaskStatus.RUNNING
    assert info.progress == pytest.approx(0.1)


async def test_progress_visible_while_running(tasks: TaskManager) -> None:
    tid = tasks.submit(progress_steps, 5, 0.05)
    seen: list[float] = []
    with trio.fail_after(20):
        async for info in tasks.watch(tid):
            if info.progress is not None:
                seen.append(info.progress)
    assert seen == sorted(seen)
    assert seen[-1] == 1.0
    assert len(set(seen)) >= 2  # intermediate values arrived while it ran


async def test_flood_is_coalesced(tasks: TaskManager) -> None:
    tid = tasks.submit(progress_flood, 200_000)
    versions: list[int] = []
    with trio.fail_after(60):
        async for _ in tasks.watch(tid):
            versions.append(testing.change_count(tasks, tid))
    info = await tasks.info(tid)
    assert info.status is TaskStatus.COMPLETED
    assert info.progress == 1.0
    assert info.progress_message == "flood over"
    # Far fewer than one message per call reached the parent.
    assert testing.change_count(tasks, tid) < 2_000


async def test_watch_sequence(tasks: TaskManager) -> None:
    tid = tasks.submit(progress_steps, 3, 0.01)
    watcher = tasks.watch(tid)
    with trio.fail_after(20):
        await tasks.result(tid)  # read nothing until the task is over: a slow consumer
        infos = [info async for info in watcher]
    assert [i.status for i in infos] == [TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.COMPLETED]
    assert infos[1].progress == 1.0  # newest progress of the RUNNING phase
    assert infos[-1].completed_at is not None


async def test_watch_finished_task_yields_once(tasks: TaskManager) -> None:
    tid = tasks.submit(simple_task, 1)
    with trio.fail_after(20):
        await tasks.result(tid)
        infos = [info async for info in tasks.watch(tid)]
    assert [i.status for i in infos] == [TaskStatus.COMPLETED]


async def test_watch_unknown_id(tasks: TaskManager) -> None:
    with pytest.raises(KeyError, match="Task not found: nope"):
        tasks.watch("nope")


async def test_watch_cancelled_task(tasks: TaskManager) -> None:
    tid = tasks.submit(slow_task, 60)
    await wait_status(tasks, tid, TaskStatus.RUNNING)
    watcher = tasks.watch(tid)
    with trio.fail_after(20):
        await tasks.cancel(tid)
        statuses = [i.status async for i in watcher]
    assert statuses == [TaskStatus.RUNNING, TaskStatus.CANCELLED]


async def test_leaving_watch_early_releases(tasks: TaskManager) -> None:
    tid = tasks.submit(slow_task, 60)
    with trio.fail_after(20):
        async for _info in tasks.watch(tid):
            break
    gc.collect()
    assert testing.watcher_count(tasks, tid) == 0


async def test_watching_a_long_task_again_and_again_stays_small(tasks: TaskManager) -> None:
    # A dashboard polling a long job opens and drops a watcher per request: the record must
    # not keep a slot for each dropped one (they are swept as the list grows).

    tid = tasks.submit(slow_task, 60)
    await wait_status(tasks, tid, TaskStatus.RUNNING)
    keep = [tasks.watch(tid) for _ in range(3)]  # some stay alive throughout

    async def drop_watchers(n: int) -> None:
        for _ in range(n):
            async for _info in tasks.watch(tid):
                break

    with trio.fail_after(60):
        await drop_watchers(1_000)  # warm-up: caches, interned strings
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await drop_watchers(20_000)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert testing.watcher_count(tasks, tid) == len(keep)
    assert grown < 100_000, f"{grown} bytes kept after 20,000 dropped watchers"
    with trio.fail_after(20):
        assert await tasks.cancel(tid)
        for watcher in keep:
            assert [i.status async for i in watcher][-1] is TaskStatus.CANCELLED


async def test_change_stream_many_subscribers(tasks: TaskManager) -> None:
    latest: dict[str, TaskInfo] = {}
    ids: list[str] = []
    async with tasks.open_change_stream() as reader, tasks.open_change_stream(max_pending=10) as stalled:
        ids.extend(tasks.submit(simple_task, i) for i in range(100))
        with trio.fail_after(30):
            async for info in reader:
                latest[info.task_id] = info
                if len(latest) == 100 and all(i.status.is_terminal for i in latest.values()):
                    break
        # The reader saw every task's final state; the stalled one stayed bounded.
        assert set(latest) == set(ids)
        assert all(i.status is TaskStatus.COMPLETED for i in latest.values())
        assert len(stalled._pending) == 10
        assert stalled.dropped >= 90
        newest = [await anext(stalled) for _ in range(10)]
        assert all(i.status is TaskStatus.COMPLETED for i in newest)


async def test_change_stream_ends_at_shutdown() -> None:
    tm = TaskManager(1)
    with trio.fail_after(30):
        await tm.startup()
        seen: list[TaskInfo] = []

        async def consume() -> None:
            async with tm.open_change_stream() as changes:
                async for info in changes:
                    seen.append(info)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            await tm.run(simple_task, 1)
            await tm.shutdown()
    assert seen
    assert seen[-1].status is TaskStatus.COMPLETED
