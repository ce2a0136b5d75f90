"""Pipelining: a worker holds its next job while it runs one, and every promise still holds.

A job held ahead stays PENDING until its worker starts it; cancelling it means
it never starts, and its worker is not touched; a worker that becomes free
takes over a job held behind a long one; a worker that dies gives its held job
back to the queue, never started.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from conftest import pid_gone, wait_status, wait_until
from genro_tasks import TaskManager, TaskStatus, WorkerCrashed, testing
from genro_tasks._backend import Lost
from genro_tasks._launch import default_context
from genro_tasks._process_backend import HELD_AHEAD, HELD_BUDGET, ProcessBackend
from genro_tasks._worker_proc import WorkerProcess
from genro_tasks_worker._protocol import Job, Message, Ready, encode
from jobs_pipeline import (
    exit_when_file,
    mark_started,
    mark_then_wait,
    sleep_then_pid,
    stop_in_clean_up_after,
    wait_for_file,
)
from test_backend_contract import Recorder, _payload


async def _held_ahead(tm: TaskManager, task_id: str, pid: int) -> None:
    """Wait until ``task_id`` is handed to worker ``pid`` (held behind its running job)."""
    await wait_until(tm, lambda: testing.assigned_worker_pid(tm, task_id) == pid)


async def _appears(path: Path) -> None:
    """Wait until another process creates ``path`` (no event crosses processes: look every 10 ms)."""
    while not path.exists():  # noqa: ASYNC110
        await trio.sleep(0.01)


async def _running_then_held(
    tm: TaskManager, first_job: Callable[[str], object], arg: str, trace: str
) -> tuple[str, int, str]:
    """Run ``first_job(arg)`` on the only worker, then hand it ``mark_started(trace)`` to hold.

    Returns the running task's id, its worker's pid and the held task's id.
    """
    first = tm.submit(first_job, arg)
    await wait_status(tm, first, TaskStatus.RUNNING)
    pid = (await tm.info(first)).worker_pid
    assert pid is not None
    ahead = tm.submit(mark_started, trace)
    await _held_ahead(tm, ahead, pid)
    return first, pid, ahead


async def test_a_job_held_ahead_stays_pending_then_runs_on_the_same_worker(tmp_path: Path) -> None:
    release = tmp_path / "release"
    async with TaskManager(1) as tm:
        first, pid, ahead = await _running_then_held(tm, wait_for_file, str(release), str(tmp_path / "trace"))
        info = await tm.info(ahead)
        assert (info.status, info.started_at, info.worker_pid) == (TaskStatus.PENDING, None, None)
        assert tm.statistics().tasks_queued == 1  # held ahead counts as queued
        release.touch()
        with trio.fail_after(20):
            assert await tm.result(ahead) == pid
            assert await tm.result(first) == pid


async def test_cancelling_a_job_held_ahead_never_starts_it_and_spares_the_worker(tmp_path: Path) -> None:
    release, trace = tmp_path / "release", tmp_path / "trace"
    async with TaskManager(1) as tm:
        first, pid, ahead = await _running_then_held(tm, wait_for_file, str(release), str(trace))
        with trio.fail_after(10):
            assert await tm.cancel(ahead) is True
        info = await tm.info(ahead)
        assert (info.status, info.error, info.started_at) == (TaskStatus.CANCELLED, "cancelled while queued", None)
        assert await tm.status(first) is TaskStatus.RUNNING  # its worker was not killed
        assert tm.statistics().tasks_queued == 0
        after = tm.submit(mark_started, str(trace))  # held ahead in turn, behind `first`
        release.touch()
        with trio.fail_after(20):
            assert await tm.result(first) == pid
            assert await tm.result(after) == pid  # the same worker: it skipped the cancelled job
        assert trace.read_text().splitlines() == [str(pid)]  # only `after` ever ran


async def test_a_free_worker_takes_over_a_job_held_behind_a_long_one(tmp_path: Path) -> None:
    async with TaskManager(2) as tm:
        long_ones = [tm.submit(wait_for_file, str(tmp_path / f"never-{i}")) for i in range(2)]
        for tid in long_ones:
            await wait_status(tm, tid, TaskStatus.RUNNING)
        ahead = tm.submit(mark_started, str(tmp_path / "trace"))
        await wait_until(tm, lambda: testing.assigned_worker_pid(tm, ahead) is not None)
        holder = testing.assigned_worker_pid(tm, ahead)
        [other] = [t for t in long_ones if testing.snapshot(tm, t).worker_pid != holder]
        with trio.fail_after(10):
            await tm.cancel(other)  # its worker is killed; its replacement takes `ahead` over
        with trio.fail_after(20):
            ran_on = await tm.result(ahead)
        assert ran_on != holder  # it did not wait behind the long job
        [kept] = [t for t in long_ones if t != other]
        assert await tm.status(kept) is TaskStatus.RUNNING
        await tm.cancel(kept)


async def test_a_dying_worker_gives_its_held_job_back_never_started(tmp_path: Path) -> None:
    die, trace = tmp_path / "die", tmp_path / "trace"
    async with TaskManager(1) as tm:
        doomed = tm.submit(exit_when_file, str(die), 7)
        await wait_status(tm, doomed, TaskStatus.RUNNING)
        pid = (await tm.info(doomed)).worker_pid
        assert pid is not None
        ahead = tm.submit(mark_started, str(trace))
        await _held_ahead(tm, ahead, pid)
        die.touch()
        with trio.fail_after(20):
            ran_on = await tm.result(ahead)
        assert ran_on != pid
        assert pid_gone(pid)
        assert trace.read_text().splitlines() == [str(ran_on)]  # it ran once, on the replacement
        with pytest.raises(WorkerCrashed):
            await tm.result(doomed)


async def test_cancelling_the_running_job_requeues_the_one_held_behind_it(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    async with TaskManager(1) as tm:
        first, pid, ahead = await _running_then_held(tm, wait_for_file, str(tmp_path / "never"), str(trace))
        with trio.fail_after(10):
            assert await tm.cancel(first) is True
        with trio.fail_after(20):
            ran_on = await tm.result(ahead)
        assert ran_on != pid
        assert trace.read_text().splitlines() == [str(ran_on)]


async def test_a_held_job_whose_worker_is_stuck_in_the_clean_up_before_it_runs_once_on_the_replacement(
    tmp_path: Path,
) -> None:
    """The job before returned, its result left, then its worker stopped in its clean-up, before it
    took the ticket of the job it holds next.

    The result is not held back by the clean-up. The held job never began: the worker, silent while it
    owes that job's STARTED, is replaced, and the job runs once, on the replacement.
    """
    trace = tmp_path / "trace"
    async with TaskManager(1) as tm:
        # Held behind the long job: the stopper, then the job that must still run once.
        long, pid, stopper, ahead = await _stopper_then_held(tm, tmp_path)
        await _stuck_after_both_returned(tm, tmp_path, pid, long, stopper)  # before it takes `ahead`'s ticket
        assert (await tm.info(ahead)).status is TaskStatus.PENDING
        with trio.fail_after(10):
            ran_on = await tm.result(ahead)
        assert ran_on != pid
        assert pid_gone(pid)
        assert trace.read_text().splitlines() == [str(ran_on)]  # once, on the replacement


async def test_cancelling_a_held_job_while_its_worker_is_stuck_in_the_clean_up_before_it_takes_it_over(
    tmp_path: Path,
) -> None:
    """The worker is stuck in its clean-up before it took the held job's ticket: the cancel takes it back.

    The job never started: CANCELLED at once, never run. The stuck worker, handed the next job, is
    replaced (it owes that job's STARTED), and that job runs on the replacement.
    """
    trace = tmp_path / "trace"
    async with TaskManager(1) as tm:
        long, pid, stopper, ahead = await _stopper_then_held(tm, tmp_path)
        await _stuck_after_both_returned(tm, tmp_path, pid, long, stopper)
        with trio.fail_after(10):
            assert await tm.cancel(ahead) is True
        info = await tm.info(ahead)
        assert (info.status, info.error, info.started_at) == (TaskStatus.CANCELLED, "cancelled while queued", None)
        assert not trace.exists()  # it never ran
        with trio.fail_after(10):
            assert await tm.run(mark_started, str(trace)) != pid  # the stuck worker was replaced
        assert pid_gone(pid)
        assert len(trace.read_text().splitlines()) == 1


async def test_cancelling_either_of_two_jobs_a_worker_holds_before_it_starts_them(tmp_path: Path) -> None:
    """Two jobs handed at once to a free worker; one is cancelled at once: it never runs, the other runs once.

    Whether the worker took the first job's ticket before the cancel or not, the
    outcome is the same (a ticket taken back with the cancelled one is granted again).
    """
    for round_, cancelled_index in enumerate((0, 1, 0, 1)):
        trace = tmp_path / f"trace-{round_}"
        async with TaskManager(1) as tm:
            await tm.run(mark_started, str(tmp_path / "warm"))
            both = [tm.submit(mark_started, str(trace)) for _ in range(2)]  # no checkpoint: both handed out
            victim, survivor = both[cancelled_index], both[1 - cancelled_index]
            with trio.fail_after(10):
                await tm.cancel(victim)
                ran_on = await tm.result(survivor)
            info = await tm.info(victim)
            if info.status is TaskStatus.CANCELLED and info.error == "cancelled while queued":
                assert info.started_at is None
                assert trace.read_text().splitlines() == [str(ran_on)]  # only the survivor ran
            else:  # the worker had started it in that very instant (seen or not): cancelled as a running task
                assert info.status in (TaskStatus.CANCELLED, TaskStatus.COMPLETED)
                assert info.error != "cancelled while queued"


@pytest.fixture
async def one_worker() -> AsyncIterator[Recorder]:
    """A process backend of one forkserver worker, served, its worker ready (cf. test_backend_contract's ``served``)."""
    backend = ProcessBackend(1, default_context("forkserver"))
    recorder = Recorder(backend)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backend.serve, recorder)
        with trio.fail_after(30):
            await recorder.wait_for(lambda: recorder.ready == 1)
        yield recorder
        nursery.cancel_scope.cancel()


async def test_killing_both_jobs_a_worker_holds_while_it_takes_the_first(tmp_path: Path, one_worker: Recorder) -> None:
    """The backend's kill of two jobs not started yet, while the worker may be taking the first one.

    Whichever side wins each ticket, the second job never starts and is lost
    before it started, the first is lost (killed once started, or taken back),
    and nothing hangs.
    """
    first_trace, second_trace = tmp_path / "first", tmp_path / "second"
    recorder = one_worker
    backend = recorder.backend
    backend.dispatch(1, _payload(mark_then_wait, str(first_trace), str(tmp_path / "never")))
    backend.dispatch(2, _payload(mark_started, str(second_trace)))
    # No checkpoint: the worker may take job 1's ticket (and start it) before the parent sees it.
    time.sleep(0.2)  # noqa: ASYNC251 - blocking the loop is the point: the parent must not read yet
    backend.kill(1)
    backend.kill(2)
    with trio.fail_after(30):
        await recorder.wait_for(lambda: recorder.ended(1) and recorder.ended(2))
    [(kind, lost)] = recorder.of(2)
    assert kind == "lost"
    assert isinstance(lost, Lost)
    assert lost.retryable  # it never started
    assert not second_trace.exists()
    assert recorder.of(1)[-1][0] == "lost"


async def _busy_worker(tm: TaskManager, tmp_path: Path, warm_up: float = 0.0) -> tuple[str, int, Path]:
    """Run one job on the only worker (taking ``warm_up`` seconds: 0 is quick), then start a long one.

    Returns the long job's id, its worker's pid and the file that releases it.
    """
    with trio.fail_after(20):
        await tm.run(sleep_then_pid, 0)  # the worker imports the job's module: not quick
        pid = await tm.run(sleep_then_pid, warm_up)
    release = tmp_path / "release"
    first = tm.submit(wait_for_file, str(release))
    await wait_status(tm, first, TaskStatus.RUNNING)
    assert (await tm.info(first)).worker_pid == pid
    return first, pid, release


async def _stopper_then_held(tm: TaskManager, tmp_path: Path) -> tuple[str, int, str, str]:
    """Hold, behind a long job on the only worker, a stopper then ``mark_started(tmp_path / "trace")``; release both.

    The stopper stops its worker (SIGSTOP) in the clean-up after it returns, before that worker takes
    the held job's ticket; it touches ``tmp_path / "stopper.stopped"`` just before.
    Returns the long job's id, its worker's pid, the stopper's id and the held job's id.
    """
    long, pid, release = await _busy_worker(tm, tmp_path)
    stopper = tm.submit(stop_in_clean_up_after, str(tmp_path / "stopper"))
    ahead = tm.submit(mark_started, str(tmp_path / "trace"))
    for tid in (stopper, ahead):
        await _held_ahead(tm, tid, pid)
    (tmp_path / "stopper.release").touch()
    release.touch()
    return long, pid, stopper, ahead


async def _stuck_after_both_returned(tm: TaskManager, tmp_path: Path, pid: int, long: str, stopper: str) -> None:
    """After :func:`_stopper_then_held`: both jobs return on ``pid``, then the stopper's worker stops itself."""
    with trio.fail_after(20):
        assert await tm.result(long) == pid
        assert await tm.result(stopper) == pid
        await _appears(tmp_path / "stopper.stopped")


def _held_by(tm: TaskManager, ids: list[str], pid: int) -> list[str]:
    return [tid for tid in ids if testing.assigned_worker_pid(tm, tid) == pid]


async def test_a_worker_whose_jobs_are_quick_holds_several_jobs_ahead(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    async with TaskManager(1) as tm:
        first, pid, release = await _busy_worker(tm, tmp_path)
        later = [tm.submit(mark_started, str(trace)) for _ in range(HELD_AHEAD + 1)]
        await wait_until(tm, lambda: len(_held_by(tm, later, pid)) >= 3)  # a quick job's worker holds several
        held = _held_by(tm, later, pid)
        assert held == later[: len(held)]  # the oldest ones
        assert len(held) <= HELD_AHEAD  # never more: the last one at least stays queued
        assert all(testing.snapshot(tm, tid).status is TaskStatus.PENDING for tid in later)
        assert tm.statistics().tasks_queued == len(later)  # held ones count as queued
        release.touch()
        with trio.fail_after(20):
            assert [await tm.result(tid) for tid in [first, *later]] == [pid] * (HELD_AHEAD + 2)
        assert trace.read_text().splitlines() == [str(pid)] * (HELD_AHEAD + 1)  # each ran once


async def test_a_worker_whose_last_job_was_not_quick_holds_one_job_ahead_so_priorities_hold(tmp_path: Path) -> None:
    """Held jobs delay a later, more urgent one only while jobs are quick; after a slow one, one job."""
    async with TaskManager(1) as tm:
        _first, pid, release = await _busy_worker(tm, tmp_path, warm_up=2 * HELD_BUDGET)
        normal = [tm.submit(sleep_then_pid, 0) for _ in range(3)]
        await _held_ahead(tm, normal[0], pid)
        assert [testing.assigned_worker_pid(tm, tid) for tid in normal[1:]] == [None, None]  # queued
        urgent = tm.options(priority=10).submit(sleep_then_pid, 0)
        release.touch()
        with trio.fail_after(20):
            await tm.result(normal[2])
        started = {tid: (await tm.info(tid)).started_at for tid in [*normal, urgent]}
        assert started[normal[0]] <= started[urgent] <= started[normal[1]] <= started[normal[2]]  # type: ignore[operator]


async def test_cancelling_one_of_several_held_jobs_spares_the_others_and_their_order(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    async with TaskManager(1) as tm:
        first, pid, release = await _busy_worker(tm, tmp_path)
        held = [tm.submit(mark_started, str(trace)) for _ in range(3)]
        for tid in held:
            await _held_ahead(tm, tid, pid)
        victim = held[1]
        with trio.fail_after(10):
            assert await tm.cancel(victim) is True
        info = await tm.info(victim)
        assert (info.status, info.error, info.started_at) == (TaskStatus.CANCELLED, "cancelled while queued", None)
        assert await tm.status(first) is TaskStatus.RUNNING  # its worker was not killed
        kept = [tid for tid in held if tid != victim]
        release.touch()
        with trio.fail_after(20):
            assert [await tm.result(tid) for tid in kept] == [pid] * len(kept)
        starts = [(await tm.info(tid)).started_at for tid in kept]
        assert starts == sorted(starts)  # type: ignore[type-var]
        assert trace.read_text().splitlines() == [str(pid)] * len(kept)  # the cancelled one never ran


async def test_killing_the_running_job_gives_back_every_job_held_behind_it(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    async with TaskManager(1) as tm:
        first, pid, _release = await _busy_worker(tm, tmp_path)
        held = [tm.submit(mark_started, str(trace)) for _ in range(3)]
        for tid in held:
            await _held_ahead(tm, tid, pid)
        with trio.fail_after(10):
            assert await tm.cancel(first) is True
        with trio.fail_after(20):
            ran_on = {await tm.result(tid) for tid in held}
        assert pid not in ran_on  # on the replacement worker
        assert len(ran_on) == 1
        assert sorted(trace.read_text().splitlines()) == [str(ran_on.pop())] * len(held)  # each once


async def test_a_job_killed_after_it_started_unseen_is_not_reported_as_never_started(
    tmp_path: Path, one_worker: Recorder
) -> None:
    """A job sent to an idle worker starts; the parent kills it before reading its STARTED.

    Its STARTED is still in the dead worker's pipe: it is read there, and the job is lost
    as started (not retryable), never as a job that did not start.
    """
    trace = tmp_path / "trace"
    recorder = one_worker
    backend = recorder.backend
    backend.dispatch(1, _payload(mark_then_wait, str(trace), str(tmp_path / "never")))
    deadline = time.monotonic() + 30
    while not trace.exists() and time.monotonic() < deadline:  # no checkpoint: STARTED stays unread
        time.sleep(0.001)  # noqa: ASYNC251 - blocking the loop is the point: the parent must not read yet
    assert trace.exists()
    backend.kill(1)
    with trio.fail_after(30):
        await recorder.wait_for(lambda: recorder.ended(1))
    [(kind, lost)] = [event for event in recorder.of(1) if event[0] != "started"]
    assert kind == "lost"
    assert isinstance(lost, Lost)
    assert not lost.retryable  # it started: it must not be taken for a job that never ran


async def test_a_worker_keeps_the_ticket_it_took_while_skipping_a_job_across_a_job_sent_to_it_idle(
    tmp_path: Path,
) -> None:
    """Job 2 was taken back (its frame is in the pipe, its ticket is not); the worker, then idle, got job 3
    (no ticket) and job 4 (ticket) before it read job 2's frame. Skipping 2, it takes 4's ticket: it must
    keep it across job 3 and run job 4 (it skipped 4, and the parent waited for it forever).
    """
    trace = tmp_path / "trace"
    alive_r, alive_w = os.pipe()
    w = WorkerProcess(default_context("forkserver"), alive_r, 1)
    messages: list[Message] = []

    async def next_message() -> Message:
        while not messages:
            if w.receive(messages) is None:
                await trio.lowlevel.wait_readable(w.reader.fd)
        return messages.pop(0)

    try:
        with trio.fail_after(30):
            assert isinstance(await next_message(), Ready)
            assert w.job_fd is not None
            os.write(w._ticket_w, struct.pack("<Q", 4))  # type: ignore[arg-type]
            for seq, ticketed in ((2, True), (3, False), (4, True)):
                os.write(w.job_fd, b"".join(encode(Job(seq, _payload(mark_started, f"{trace}-{seq}"), ticketed))))
            got = [await next_message() for _ in range(4)]
        assert [(type(m).__name__, m.seq) for m in got] == [  # type: ignore[union-attr]
            ("Started", 3),
            ("DoneOk", 3),
            ("Started", 4),
            ("DoneOk", 4),
        ]
        assert not Path(f"{trace}-2").exists()
    finally:
        w.kill()
        with trio.move_on_after(10):
            await w.wait_reaped(10)
        w.release()
        os.close(alive_w)
        os.close(alive_r)
