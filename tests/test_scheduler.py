"""Unit tests of the scheduler with a fake backend: no processes, a virtual clock.

The scheduler's promises, checked in isolation: priority then FIFO, PENDING
until the backend says the job started, one terminal status, timeouts counted
from RUNNING, graceful cancel, what a worker's death means, lifecycle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from genro_tasks import SupervisorFailed, TaskCancelled, TaskTimeout, WorkerCrashed, WorkerInitError
from genro_tasks._scheduler import MAX_REQUEUES, Lifecycle, Scheduler  # the module under test
from genro_tasks._task import TaskRecord, TaskStatus
from genro_tasks.testing import FakeBackend


def _status(rec: TaskRecord) -> TaskStatus:
    return rec.status  # read through a call: it changes behind mypy's back


def _lifecycle(scheduler: Scheduler) -> Lifecycle:
    return scheduler.lifecycle


class Harness:
    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.changes: list[tuple[str, TaskStatus]] = []
        self.rooms = 0
        self.ended = False
        self.scheduler = Scheduler(backend, self._changed, self._room, self._end)
        self._seq = 0

    def _changed(self, rec: TaskRecord | None) -> None:
        if rec is not None:
            self.changes.append((rec.task_id, rec.status))

    def _room(self) -> None:
        self.rooms += 1

    def _end(self) -> None:
        self.ended = True

    def submit(self, task_id: str, *, priority: int = 0, timeout: float | None = None) -> TaskRecord:
        self._seq += 1
        rec = TaskRecord(self._seq, task_id, "job", b"payload", None, timeout, priority)
        self.scheduler.enqueue(rec)
        return rec


@pytest.fixture
async def fake() -> AsyncIterator[Harness]:
    harness = Harness(FakeBackend(capacity=1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.scheduler.run)
        with trio.fail_after(5):
            await harness.scheduler.wait_started()
        yield harness
        with trio.fail_after(5):
            await harness.scheduler.stop(wait=False, cancel_pending=True)


async def test_priority_then_fifo(fake: Harness) -> None:
    first = fake.submit("first")
    assert list(fake.backend.jobs) == [first.seq]
    low = fake.submit("low")
    high1 = fake.submit("high1", priority=5)
    high2 = fake.submit("high2", priority=5)
    low2 = fake.submit("low2")
    order = []
    for _ in range(5):
        (key,) = fake.backend.jobs
        order.append(key)
        fake.backend.start(key)
        fake.backend.finish(key, key)
    assert order == [first.seq, high1.seq, high2.seq, low.seq, low2.seq]


async def test_a_requeued_task_keeps_its_place_among_younger_ones(fake: Harness) -> None:
    # Lost before it started, a task goes back to the queue at its submission's place: ahead of
    # those of its priority submitted after it, behind any of a higher priority.
    first = fake.submit("first")
    young = [fake.submit(f"young{i}") for i in range(3)]
    urgent = fake.submit("urgent", priority=1)
    fake.backend.lose(first.seq, exitcode=-9)
    assert _status(first) is TaskStatus.PENDING
    cancelled = young[1]
    fake.scheduler.cancel(cancelled)  # a stale entry in the queue, skipped
    later = fake.submit("later")
    order = []
    while fake.backend.jobs:
        (key,) = fake.backend.jobs
        order.append(key)
        fake.backend.start(key)
        fake.backend.finish(key, key)
    assert order == [urgent.seq, first.seq, young[0].seq, young[2].seq, later.seq]


async def test_pending_until_started_then_one_terminal(fake: Harness) -> None:
    rec = fake.submit("t")
    assert _status(rec) is TaskStatus.PENDING  # handed to the backend, not started
    fake.backend.start(rec.seq, worker=42)
    assert _status(rec) is TaskStatus.RUNNING
    assert rec.worker_pid == 42
    fake.backend.report_progress(rec.seq, 0.5, "half")
    fake.backend.finish(rec.seq, "value")
    assert rec.outcome() == "value"
    assert [s for _, s in fake.changes] == [TaskStatus.RUNNING, TaskStatus.RUNNING, TaskStatus.COMPLETED]


async def test_lost_before_start_is_requeued_then_crashed(fake: Harness) -> None:
    rec = fake.submit("t")
    for _ in range(MAX_REQUEUES):
        fake.backend.lose(rec.seq, exitcode=-9)
        assert _status(rec) is TaskStatus.PENDING
        assert rec.seq in fake.backend.jobs  # sent again
    fake.backend.lose(rec.seq, exitcode=-9)
    assert _status(rec) is TaskStatus.FAILED
    with pytest.raises(WorkerCrashed):
        rec.outcome()


async def test_lost_after_start_is_a_crash_never_a_rerun(fake: Harness) -> None:
    rec = fake.submit("t")
    fake.backend.start(rec.seq)
    fake.backend.lose(rec.seq, exitcode=-11)
    assert _status(rec) is TaskStatus.FAILED
    assert not fake.backend.jobs
    with pytest.raises(WorkerCrashed, match="SIGSEGV"):
        rec.outcome()


async def test_cancel_queued_and_in_flight(fake: Harness) -> None:
    running = fake.submit("running")
    queued = fake.submit("queued")
    fake.scheduler.cancel(queued)
    assert _status(queued) is TaskStatus.CANCELLED
    assert fake.backend.killed == []  # nothing to kill for a queued task
    fake.backend.start(running.seq)
    fake.scheduler.cancel(running)
    assert fake.backend.killed == [running.seq]
    assert _status(running) is TaskStatus.CANCELLED
    with pytest.raises(TaskCancelled, match="cancelled by the caller"):
        running.outcome()


async def test_cancel_waits_for_the_death() -> None:
    harness = Harness(FakeBackend(capacity=1, kill_at_once=False))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.scheduler.run)
        await harness.scheduler.wait_started()
        rec = harness.submit("t")
        harness.backend.start(rec.seq)
        harness.scheduler.cancel(rec)
        harness.scheduler.cancel(rec)  # twice: one kill
        assert harness.backend.killed == [rec.seq]
        assert _status(rec) is TaskStatus.RUNNING  # not CANCELLED before the worker is dead
        harness.backend.lose(rec.seq, exitcode=-9)
        assert _status(rec) is TaskStatus.CANCELLED
        await harness.scheduler.stop(wait=True, cancel_pending=False)


async def test_cancel_while_the_worker_already_dies_is_a_cancel() -> None:
    harness = Harness(FakeBackend(capacity=1, kill_at_once=False))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.scheduler.run)
        await harness.scheduler.wait_started()
        rec = harness.submit("t")  # handed over, not started: a death would requeue it
        harness.scheduler.cancel(rec)  # the backend is (say) already killing that worker for a crash
        harness.backend.lose(rec.seq, exitcode=-9, retryable=True)
        assert _status(rec) is TaskStatus.CANCELLED
        assert not harness.backend.jobs  # not sent again
        started = harness.submit("started")
        harness.backend.start(started.seq)
        harness.scheduler.cancel(started)  # its worker crashes at the same moment
        harness.backend.lose(started.seq, exitcode=-11)
        assert _status(started) is TaskStatus.CANCELLED  # the caller asked: cancel() returns True
        await harness.scheduler.stop(wait=True, cancel_pending=False)


async def test_timeout_counts_from_running(fake: Harness, autojump_clock: trio.abc.Clock) -> None:
    rec = fake.submit("t", timeout=5)
    await trio.sleep(60)  # handed over but not started: the clock does not run yet
    assert _status(rec) is TaskStatus.PENDING
    assert fake.backend.killed == []
    fake.backend.start(rec.seq)
    started = trio.current_time()
    await trio.sleep(4.9)
    assert _status(rec) is TaskStatus.RUNNING
    with trio.fail_after(1):
        await rec.wait_done()
    assert trio.current_time() - started == pytest.approx(5)
    with pytest.raises(TaskTimeout):
        rec.outcome()


async def test_graceful_cancel(fake: Harness, autojump_clock: trio.abc.Clock) -> None:
    ends_itself = fake.submit("polite")
    fake.backend.start(ends_itself.seq)
    fake.scheduler.cancel(ends_itself, grace=10)
    assert fake.backend.interrupted == [ends_itself.seq]
    assert fake.backend.killed == []
    fake.backend.fail(ends_itself.seq, "CancelRequested", "")
    assert _status(ends_itself) is TaskStatus.CANCELLED

    stubborn = fake.submit("stubborn")
    fake.backend.start(stubborn.seq)
    fake.scheduler.cancel(stubborn, grace=10)
    with trio.fail_after(11):
        await stubborn.wait_done()
    assert fake.backend.killed == [stubborn.seq]  # killed once the grace period ran out
    assert _status(stubborn) is TaskStatus.CANCELLED


async def test_shutdown_without_wait_cancels_everything() -> None:
    harness = Harness(FakeBackend(capacity=1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.scheduler.run)
        await harness.scheduler.wait_started()
        assert _lifecycle(harness.scheduler) is Lifecycle.RUNNING
        running = harness.submit("running")
        harness.backend.start(running.seq)
        queued = harness.submit("queued")
        with trio.fail_after(5):
            await harness.scheduler.stop(wait=False, cancel_pending=False)
    assert _lifecycle(harness.scheduler) is Lifecycle.STOPPED
    assert harness.ended
    for rec in (running, queued):
        with pytest.raises(TaskCancelled, match="shutdown"):
            rec.outcome()


async def test_shutdown_waits_for_tasks() -> None:
    harness = Harness(FakeBackend(capacity=1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.scheduler.run)
        await harness.scheduler.wait_started()
        rec = harness.submit("t")
        harness.backend.start(rec.seq)
        nursery.start_soon(harness.scheduler.stop, True, False)
        await trio.testing.wait_all_tasks_blocked()
        assert _lifecycle(harness.scheduler) is Lifecycle.DRAINING
        assert not harness.scheduler.accepting
        harness.backend.finish(rec.seq, 1)
    assert _lifecycle(harness.scheduler) is Lifecycle.STOPPED
    assert rec.outcome() == 1


async def test_initializer_failure_with_no_worker_left_fails_the_queue(fake: Harness) -> None:
    running = fake.submit("running")
    queued = fake.submit("queued")
    error = WorkerInitError("OSError", "database unreachable", "")
    fake.scheduler.start_failed(error, none_left=False)
    assert _status(queued) is TaskStatus.PENDING  # another worker may still run it
    fake.scheduler.start_failed(error, none_left=True)
    assert _status(queued) is TaskStatus.FAILED
    with pytest.raises(WorkerInitError, match="database unreachable"):
        queued.outcome()
    assert _status(running) is TaskStatus.PENDING


async def test_failure_fails_everything_and_stops() -> None:
    harness = Harness(FakeBackend(capacity=1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.scheduler.run)
        await harness.scheduler.wait_started()
        running = harness.submit("running")
        harness.backend.start(running.seq)
        queued = harness.submit("queued")
        harness.scheduler.failed(RuntimeError("a bug"))
    assert _lifecycle(harness.scheduler) is Lifecycle.FAILED
    assert not harness.scheduler.accepting
    for rec in (running, queued):
        with pytest.raises(SupervisorFailed, match="a bug"):
            rec.outcome()
