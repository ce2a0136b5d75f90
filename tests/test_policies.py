"""Operational policies: retention, backpressure, priorities, worker lifecycle,
graceful cancel, memory limits, coroutine jobs, statistics, logging."""

from __future__ import annotations

import inspect
import logging
import os
import signal
from pathlib import Path

import pytest
import trio

from conftest import statuses, wait_status, wait_until
from genro_tasks import (
    MemoryLimitExceeded,
    QueueFull,
    TaskCancelled,
    TaskManager,
    TaskStatus,
    TaskTimeout,
    WorkerInitError,
    testing,
)
from jobs import (
    allocate,
    async_cleanup,
    async_job,
    async_trio_loaded,
    cleanup_on_cancel,
    exit_hard,
    failing_task,
    getpid,
    ignore_cancel,
    init_always_fails,
    init_tag,
    init_unless_marker,
    init_worker,
    progress_steps,
    return_on_cancel,
    simple_task,
    slow_task,
)


# --------------------------------------------------------------------- retention
async def test_bounded_retention_forgets_oldest_finished() -> None:
    async with TaskManager(1, max_finished=5) as tm:
        ids = [tm.submit(simple_task, i) for i in range(10)]
        with trio.fail_after(30):
            # gather() follows the records it was given: one result() per task could find a task
            # already forgotten, once five later ones had finished while it waited on an earlier one.
            assert await tm.gather(ids) == [2 * i for i in range(10)]
        kept = [i.task_id for i in tm.list_tasks()]
        assert kept == ids[5:]
        with pytest.raises(KeyError, match="not found"):
            await tm.info(ids[0])
        assert tm.statistics().tasks_tracked == 5
        assert tm.statistics().tasks_completed == 10


async def test_retention_never_drops_unfinished() -> None:
    async with TaskManager(1, max_finished=1) as tm:
        with trio.fail_after(30):
            quick = [await tm.run(simple_task, i, task_id=f"quick-{i}") for i in range(2)]
        assert quick == [0, 2]
        assert [i.task_id for i in tm.list_tasks()] == ["quick-1"]
        blocker = tm.submit(slow_task, 60)
        queued = [tm.submit(simple_task, i) for i in range(3)]
        await wait_status(tm, blocker, TaskStatus.RUNNING)
        assert {i.task_id for i in tm.list_tasks()} == {"quick-1", blocker, *queued}
        watchers = [tm.watch(t) for t in queued]
        assert await tm.cancel(blocker) is True
        assert {i.task_id for i in tm.list_tasks()} == {blocker, *queued}
        with trio.fail_after(30):
            for watcher in watchers:
                async for _info in watcher:  # ends after the terminal snapshot
                    pass
        assert [i.task_id for i in tm.list_tasks()] == [queued[-1]]


async def test_retention_age_limit() -> None:
    async with TaskManager(1, finished_ttl=0.2) as tm:
        tid = tm.submit(simple_task, 1)
        with trio.fail_after(30):
            await tm.result(tid)
        assert len(tm.list_tasks()) == 1
        await trio.sleep(0.3)  # let the age limit pass: the point of this test
        assert tm.list_tasks() == []


async def test_clear_completed_still_works_with_retention() -> None:
    async with TaskManager(1, max_finished=3) as tm:
        ids = [tm.submit(simple_task, i) for i in range(3)]
        with trio.fail_after(30):
            for tid in ids:
                await tm.result(tid)
        assert tm.clear_completed() == 3
        # The same ids can be reused and are not evicted by stale bookkeeping.
        again = [tm.submit(simple_task, i, task_id=t) for i, t in enumerate(ids)]
        with trio.fail_after(30):
            assert [await tm.result(t) for t in again] == [0, 2, 4]
        assert len(tm.list_tasks()) == 3


def test_retention_is_bounded_by_default() -> None:
    assert inspect.signature(TaskManager).parameters["max_finished"].default == 10_000


# ------------------------------------------------------------------ backpressure
async def test_backpressure() -> None:
    async with TaskManager(1, max_queued=2) as tm:
        running = tm.submit(slow_task, 60)
        await wait_status(tm, running, TaskStatus.RUNNING)
        queued = [tm.submit(simple_task, 1), tm.submit(simple_task, 2)]
        with pytest.raises(QueueFull, match="max_queued=2"):
            tm.submit(simple_task, 3, task_id="refused")
        with pytest.raises(KeyError):
            await tm.info("refused")
        got: list[str] = []

        async def waiter() -> None:
            got.append(await tm.submit_wait(simple_task, 4, task_id="waited"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # still waiting for room
            assert await tm.cancel(queued[0]) is True
        assert got == ["waited"]
        await tm.cancel(running)
        with trio.fail_after(30):
            assert await tm.result("waited") == 8


class _StepCounter(trio.abc.Instrument):
    """Counts how often trio runs the task with a given name (each step is one wake-up)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name == self.name:
            self.steps += 1


async def test_submit_wait_wakes_for_room_not_for_progress() -> None:
    """A waiting submit_wait is woken when the queue has room, not by every progress report."""
    async with TaskManager(1, max_queued=1) as tm:
        running = tm.submit(progress_steps, 20, 0.03)  # 20 progress reports, 30 ms apart
        await wait_status(tm, running, TaskStatus.RUNNING)
        tm.submit(simple_task, 1)  # the queue is full until `running` ends
        counter = _StepCounter("waiter")
        trio.lowlevel.add_instrument(counter)
        try:
            async with trio.open_nursery() as nursery:

                async def waiter() -> None:
                    with trio.fail_after(30):
                        await tm.submit_wait(simple_task, 2, task_id="waited")

                nursery.start_soon(waiter, name="waiter")
        finally:
            trio.lowlevel.remove_instrument(counter)
        info = await tm.info(running)
        assert info.status is TaskStatus.COMPLETED
        assert info.progress == 1.0  # the progress reports did arrive meanwhile
        # First step, the wake-up when room appears, its checkpoint: a few, not one per report.
        assert counter.steps <= 4, counter.steps


async def test_submit_wait_cancelled_submits_nothing() -> None:
    async with TaskManager(1, max_queued=1) as tm:
        running = tm.submit(slow_task, 60)
        await wait_status(tm, running, TaskStatus.RUNNING)
        tm.submit(simple_task, 1)
        with trio.move_on_after(0.1):
            await tm.submit_wait(simple_task, 2, task_id="never")
        assert "never" not in {i.task_id for i in tm.list_tasks()}
        await tm.cancel(running)


# -------------------------------------------------------------------- priorities
async def test_priorities_higher_first_fifo_among_equals() -> None:
    async with TaskManager(1) as tm:
        blocker = tm.submit(slow_task, 60)
        await wait_status(tm, blocker, TaskStatus.RUNNING)
        order = [
            tm.submit(simple_task, 0, task_id="low-1"),
            tm.options(priority=0).submit(simple_task, 0, task_id="low-2"),
            tm.options(priority=5).submit(simple_task, 0, task_id="high"),
            tm.options(priority=1).submit(simple_task, 0, task_id="mid"),
            tm.submit(simple_task, 0, task_id="low-3"),
            tm.options(priority=100).submit(simple_task, 0, task_id="urgent"),
            tm.options(priority=-1).submit(simple_task, 0, task_id="negative"),
        ]
        await tm.cancel(blocker)
        with trio.fail_after(30):
            for tid in order:
                await tm.result(tid)
        infos = sorted((i for i in tm.list_tasks() if i.task_id != blocker), key=lambda i: i.started_at or 0)
        assert [i.task_id for i in infos] == ["urgent", "high", "mid", "low-1", "low-2", "low-3", "negative"]
        assert (await tm.info("high")).priority == 5


# --------------------------------------------------------------- worker lifecycle
async def test_initializer_runs_in_every_worker() -> None:
    async with TaskManager(2, initializer=init_worker, initargs=("ready",)) as tm:
        with trio.fail_after(30):
            assert await tm.run(init_tag) == ["ready"]
            tid = tm.submit(exit_hard, 1)
            with pytest.raises(Exception, match="exited with code 1"):
                await tm.result(tid)
            # The replacement worker ran the initializer too.
            results = [await tm.run(init_tag) for _ in range(4)]
        assert results == [["ready"]] * 4


async def test_initializer_failing_at_startup() -> None:
    tm = TaskManager(1, initializer=init_always_fails)
    with trio.fail_after(30), pytest.raises(WorkerInitError, match="database unreachable") as info:
        await tm.startup()
    assert "init_always_fails" in info.value.remote_traceback
    assert not tm.is_running


async def test_initializer_failing_later_fails_tasks_and_backs_off(tmp_path: Path) -> None:
    marker = tmp_path / "broken"
    async with TaskManager(1, initializer=init_unless_marker, initargs=(str(marker),)) as tm:
        (pid,) = testing.worker_pids(tm)
        marker.write_text("x")
        os.kill(pid, signal.SIGKILL)
        await wait_until(tm, lambda: testing.start_error(tm) is not None)
        tid = tm.submit(simple_task, 1)
        with trio.fail_after(30), pytest.raises(WorkerInitError, match=f"Task '{tid}' could not run"):
            await tm.result(tid)
        restarts = tm.statistics().worker_restarts
        await trio.sleep(0.5)  # measure the respawn rate over a window: the point of this test
        assert tm.statistics().worker_restarts - restarts <= 5  # back-off, not a hot loop
        marker.unlink()
        await wait_until(tm, lambda: testing.start_error(tm) is None, timeout=30)
        with trio.fail_after(30):
            assert await tm.run(simple_task, 2) == 4


async def test_max_tasks_per_worker_recycles() -> None:
    async with TaskManager(1, max_tasks_per_worker=3) as tm:
        with trio.fail_after(60):
            pids = [await tm.run(getpid) for _ in range(9)]
        assert len(set(pids)) == 3
        assert pids[0] == pids[1] == pids[2] != pids[3]
        assert tm.statistics().worker_restarts >= 2


def test_bad_policy_arguments() -> None:
    with pytest.raises(ValueError, match="max_queued"):
        TaskManager(1, max_queued=0)
    with pytest.raises(ValueError, match="max_tasks_per_worker"):
        TaskManager(1, max_tasks_per_worker=-1)
    with pytest.raises(ValueError, match="finished_ttl"):
        TaskManager(1, finished_ttl=0)
    with pytest.raises(TypeError, match="initializer"):
        TaskManager(1, initializer="nope")  # type: ignore[arg-type]


# ------------------------------------------------------------------ graceful cancel
async def test_graceful_cancel_lets_the_job_clean_up(tasks: TaskManager, tmp_path: Path) -> None:
    path = tmp_path / "partial.tmp"
    tid = tasks.submit(cleanup_on_cancel, str(path))
    await wait_until(tasks, lambda: testing.snapshot(tasks, tid).progress_message == "file created")
    assert path.exists()
    pid = (await tasks.info(tid)).worker_pid
    with trio.fail_after(20):
        assert await tasks.cancel(tid, grace=10) is True
    assert not path.exists()
    info = await tasks.info(tid)
    assert info.status is TaskStatus.CANCELLED
    assert info.error is not None
    assert "CancelRequested" in info.error
    with pytest.raises(TaskCancelled):
        await tasks.result(tid)
    # The worker was not killed: it runs the next task.
    with trio.fail_after(20):
        pids = {await tasks.run(getpid) for _ in range(4)}
    assert pid in pids


async def test_graceful_cancel_kills_after_grace(tasks: TaskManager) -> None:
    tid = tasks.submit(ignore_cancel, 60)
    await wait_until(tasks, lambda: testing.snapshot(tasks, tid).progress_message == "stubborn")
    pid = (await tasks.info(tid)).worker_pid
    with trio.fail_after(20):
        assert await tasks.cancel(tid, grace=0.3) is True
    assert await tasks.status(tid) is TaskStatus.CANCELLED
    assert pid not in testing.worker_pids(tasks)


async def test_graceful_cancel_job_may_return(tasks: TaskManager) -> None:
    tid = tasks.submit(return_on_cancel)
    await wait_until(tasks, lambda: testing.snapshot(tasks, tid).progress_message == "waiting")
    with trio.fail_after(20):
        assert await tasks.cancel(tid, grace=10) is False
    assert await tasks.result(tid) == "partial result"


async def test_graceful_cancel_of_queued_task_is_immediate(tasks: TaskManager) -> None:
    blockers = [tasks.submit(slow_task, 60) for _ in range(2)]
    tid = tasks.submit(simple_task, 1)
    await wait_until(tasks, lambda: statuses(tasks, blockers) == [TaskStatus.RUNNING] * 2)
    assert await tasks.cancel(tid, grace=5) is True
    assert await tasks.status(tid) is TaskStatus.CANCELLED


# -------------------------------------------------------------------- memory limit
async def test_memory_limit(tasks: TaskManager) -> None:
    tid = tasks.options(memory_limit=100 * 1024 * 1024).submit(allocate, 400)
    with trio.fail_after(30), pytest.raises(MemoryLimitExceeded, match="memory_limit of 104,857,600 bytes") as info:
        await tasks.result(tid)
    assert isinstance(info.value, MemoryError)
    assert (await tasks.info(tid)).status is TaskStatus.FAILED
    pid = (await tasks.info(tid)).worker_pid
    with trio.fail_after(30):
        # Within its limit a job runs fine, and the limit does not outlive its task.
        assert await tasks.options(memory_limit=100 * 1024 * 1024).run(allocate, 20) == 20 * 1024 * 1024
        pids = [await tasks.run(getpid) for _ in range(4)]
        assert await tasks.run(allocate, 400) == 400 * 1024 * 1024
    assert pid in pids  # the pool was unaffected: same workers


# ----------------------------------------------------------------- coroutine jobs
async def test_async_job_runs_under_trio(tasks: TaskManager) -> None:
    tid = tasks.submit(async_job, 3, 0.01)
    with trio.fail_after(30):
        assert await tasks.result(tid) == 30
    info = await tasks.info(tid)
    assert info.progress == 1.0
    assert info.progress_message == "async step 3"


async def test_trio_imported_only_for_async_jobs() -> None:
    async with TaskManager(1) as tm:
        with trio.fail_after(30):
            assert await tm.run(async_trio_loaded) is True
    async with TaskManager(1) as tm:
        with trio.fail_after(30):
            from jobs import trio_loaded

            assert await tm.run(trio_loaded) is False


async def test_async_job_cancel_timeout_and_graceful(tasks: TaskManager, tmp_path: Path) -> None:
    tid = tasks.submit(async_job, 1, 60)
    await wait_status(tasks, tid, TaskStatus.RUNNING)
    with trio.fail_after(20):
        assert await tasks.cancel(tid) is True
    tid = tasks.options(timeout=0.3).submit(async_job, 1, 60)
    with trio.fail_after(20), pytest.raises(TaskTimeout):
        await tasks.result(tid)
    path = tmp_path / "async.tmp"
    tid = tasks.submit(async_cleanup, str(path))
    await wait_until(tasks, lambda: testing.snapshot(tasks, tid).progress_message == "file created")
    with trio.fail_after(20):
        assert await tasks.cancel(tid, grace=10) is True
    assert not path.exists()


# --------------------------------------------------------------------- statistics
async def test_statistics(tasks: TaskManager) -> None:
    stats = tasks.statistics()
    assert (stats.workers_total, stats.workers_idle, stats.workers_busy) == (2, 2, 0)
    slow = [tasks.submit(slow_task, 60) for _ in range(2)]
    queued = tasks.submit(simple_task, 1)
    await wait_until(tasks, lambda: statuses(tasks, slow) == [TaskStatus.RUNNING] * 2)
    stats = tasks.statistics()
    assert (stats.workers_busy, stats.tasks_running, stats.tasks_queued) == (2, 2, 1)
    with pytest.raises(AttributeError):
        stats.tasks_queued = 5  # type: ignore[misc]
    await tasks.cancel(slow[0])
    with trio.fail_after(20):
        await tasks.result(queued)
        with pytest.raises(ValueError, match="intentionally"):
            await tasks.run(failing_task)
        with pytest.raises(Exception, match="exited with code 9"):
            await tasks.run(exit_hard, 9)
    await wait_until(tasks, lambda: tasks.statistics().workers_total == 2)
    stats = tasks.statistics()
    assert (stats.tasks_completed, stats.tasks_failed, stats.tasks_cancelled) == (1, 2, 1)
    assert stats.worker_crashes == 1
    assert stats.worker_restarts == 2


# ------------------------------------------------------------------------ logging
async def test_logging(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="genro_tasks"):
        async with TaskManager(1) as tm:
            with trio.fail_after(20):
                await tm.run(simple_task, 1)
                with pytest.raises(Exception, match="code 4"):
                    await tm.run(exit_hard, 4)
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "genro_tasks"]
    assert any(lvl == logging.INFO and "started (pid" in msg for lvl, msg in records)
    assert any(lvl == logging.DEBUG and "running in worker" in msg for lvl, msg in records)
    assert any(lvl == logging.DEBUG and "completed" in msg for lvl, msg in records)
    assert any(lvl == logging.WARNING and "died while running task" in msg for lvl, msg in records)
    assert any(lvl == logging.INFO and "exited" in msg for lvl, msg in records)
