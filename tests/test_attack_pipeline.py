"""Attacks on pipelining: jobs a busy worker holds behind the one it runs, with real worker processes.

Each test waits on states and events (never on a lucky sleep) and bounds every wait with
``trio.fail_after``.
"""

from __future__ import annotations

from pathlib import Path

import trio

from conftest import pid_gone, wait_status, wait_until
from genro_tasks import TaskManager, TaskStatus, testing
from genro_tasks._process_backend import HELD_AHEAD, HELD_BUDGET
from jobs_pipeline import (
    fork_a_lingering_child,
    ignore_sigterm_then_pid,
    mark_started,
    report_then_return,
    sleep_then_pid,
    wait_for_file,
    wait_unless_asked,
)


async def _long_job_after_a_quick_one(tm: TaskManager, release: Path) -> tuple[str, int]:
    """Run a quick job on the only worker (it may then hold many jobs), then a long one; return its id and pid."""
    with trio.fail_after(20):
        await tm.run(sleep_then_pid, 0)  # imports the module: not quick
        await tm.run(sleep_then_pid, 0)
    long = tm.submit(wait_for_file, str(release))
    await wait_status(tm, long, TaskStatus.RUNNING)
    pid = (await tm.info(long)).worker_pid
    assert pid is not None
    return long, pid


async def test_an_urgent_task_does_not_wait_behind_many_held_jobs_that_turned_out_slow(tmp_path: Path) -> None:
    """The worker's last job was quick, so it takes many jobs to hold behind a long one; they are not quick.

    Once the long job has ended (the worker's last job is now a slow one), the worker must not
    run all of them before a more urgent task submitted meanwhile: it holds one job at most.
    """
    release = tmp_path / "release"
    async with TaskManager(1) as tm:
        _long, pid = await _long_job_after_a_quick_one(tm, release)
        normal = [tm.submit(sleep_then_pid, 0.05) for _ in range(HELD_AHEAD)]
        await wait_until(tm, lambda: testing.assigned_worker_pid(tm, normal[-1]) == pid)  # all held
        urgent = tm.options(priority=10).submit(sleep_then_pid, 0)
        await trio.sleep(2 * HELD_BUDGET)  # the long job is long: once it ends, its worker's budget is one job
        release.touch()
        with trio.fail_after(30):
            await tm.result(urgent)
        before = [tid for tid in normal if testing.snapshot(tm, tid).status is TaskStatus.COMPLETED]
        assert len(before) <= 2  # the one that started when the long job ended, and one held behind it
        with trio.fail_after(30):
            await tm.gather(normal)


async def test_a_held_job_times_out_from_its_own_start_not_from_when_it_was_handed_over(tmp_path: Path) -> None:
    release = tmp_path / "release"
    async with TaskManager(1) as tm:
        long, pid = await _long_job_after_a_quick_one(tm, release)
        held = tm.options(timeout=1.0).submit(sleep_then_pid, 0)
        await wait_until(tm, lambda: testing.assigned_worker_pid(tm, held) == pid)
        await trio.sleep(1.5)  # past its timeout, were it counted from the hand-over (the point of the test)
        assert testing.snapshot(tm, held).status is TaskStatus.PENDING
        release.touch()
        with trio.fail_after(20):
            assert await tm.result(held) == pid
            assert await tm.result(long) == pid


async def test_max_tasks_per_worker_holds_with_held_jobs(tmp_path: Path) -> None:
    """A worker runs at most ``max_tasks_per_worker`` jobs, held ones included; each job runs once."""
    trace = tmp_path / "trace"
    async with TaskManager(1, max_tasks_per_worker=3) as tm:
        with trio.fail_after(30):
            await tm.run(sleep_then_pid, 0)  # warm: quick jobs let a worker hold many
            ids = [tm.submit(mark_started, str(trace)) for _ in range(10)]
            pids = await tm.gather(ids)
    lines = trace.read_text().splitlines()
    assert sorted(lines) == sorted(str(pid) for pid in pids)  # each ran once, where it said
    assert max(pids.count(pid) for pid in pids) <= 3


async def test_a_graceful_cancel_of_a_running_job_leaves_the_jobs_held_behind_it_to_run_once(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    async with TaskManager(1) as tm:
        long, pid = await _long_job_after_a_quick_one(tm, tmp_path / "never")
        held = [tm.submit(mark_started, str(trace)) for _ in range(3)]
        await wait_until(tm, lambda: testing.assigned_worker_pid(tm, held[-1]) == pid)
        with trio.fail_after(20):
            assert await tm.cancel(long, grace=10) is True  # the job raised CancelRequested: the worker lives
            assert [await tm.result(tid) for tid in held] == [pid] * 3
        assert trace.read_text().splitlines() == [str(pid)] * 3


async def test_a_job_that_ignores_sigterm_does_not_spoil_the_graceful_cancel_of_the_job_held_behind_it(
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    async with TaskManager(1) as tm:
        _long, pid = await _long_job_after_a_quick_one(tm, release)
        careless = tm.submit(ignore_sigterm_then_pid)
        victim = tm.submit(wait_unless_asked, str(tmp_path / "never"))
        await wait_until(tm, lambda: testing.assigned_worker_pid(tm, victim) == pid)
        release.touch()
        await wait_status(tm, victim, TaskStatus.RUNNING)
        with trio.fail_after(20):
            assert await tm.cancel(victim, grace=10) is True
        info = await tm.info(victim)
        assert info.error is not None
        assert "CancelRequested" in info.error  # graceful, not killed after 10 s
        assert await tm.result(careless) == pid
        with trio.fail_after(20):
            assert await tm.run(sleep_then_pid, 0) == pid  # the worker lived on


async def test_a_job_that_forks_a_lingering_child_hands_over_to_the_held_job_without_it(tmp_path: Path) -> None:
    release, trace = tmp_path / "release", tmp_path / "trace"
    async with TaskManager(1) as tm:
        _long, pid = await _long_job_after_a_quick_one(tm, release)
        forker = tm.submit(fork_a_lingering_child)
        after = tm.submit(mark_started, str(trace))
        await wait_until(tm, lambda: testing.assigned_worker_pid(tm, after) == pid)
        release.touch()
        with trio.fail_after(20):
            child = await tm.result(forker)
            assert await tm.result(after) == pid
        assert pid_gone(child)  # killed when the job that forked it ended, before the next one


async def test_the_last_progress_of_a_job_goes_to_it_not_to_the_held_job_that_follows(tmp_path: Path) -> None:
    release = tmp_path / "release"
    async with TaskManager(1) as tm:
        _long, pid = await _long_job_after_a_quick_one(tm, release)
        reporters = [tm.submit(report_then_return, f"job {i}") for i in range(3)]
        silent = tm.submit(mark_started, str(tmp_path / "trace"))
        await wait_until(tm, lambda: testing.assigned_worker_pid(tm, silent) == pid)
        release.touch()
        with trio.fail_after(20):
            await tm.gather([*reporters, silent])
        for i, tid in enumerate(reporters):
            info = await tm.info(tid)
            assert (info.progress, info.progress_message) == (1.0, f"job {i}")
        info = await tm.info(silent)
        assert (info.progress, info.progress_message) == (None, None)
