"""What a job does to its worker stays with that job (issue 10, the worker's side).

A job may fork, leave timers, signal handlers, threads or descriptors behind,
raise exceptions that cannot be described, or be cancelled gracefully in the
worker's own windows. Whatever it does, its task ends in the right state, and
the next task on the same worker (``max_workers=1``) runs as on a fresh one.
"""

from __future__ import annotations

import functools
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from conftest import wait_pids_gone, wait_status, wait_until
from genro_tasks import RemoteError, TaskManager, TaskStatus, UnpicklableResult, testing
from jobs import getpid, return_on_cancel
from jobs_worker import (
    AsyncCallable,
    WaitWhenUnpickled,
    arm_alarm,
    async_triple,
    fork_and_leave,
    init_with_signals,
    leave_non_daemon_thread,
    leave_progress_thread,
    leave_timers_and_signals,
    open_fds,
    outlive_leftover_alarm,
    progress_with_a_leftover_around,
    raise_hostile,
    return_arg,
    return_hostile,
    signal_state,
    slow_down_trio_import,
    use_multiprocessing,
)


@pytest.fixture(params=["forkserver", "spawn"])
async def one(request: pytest.FixtureRequest) -> AsyncIterator[TaskManager]:
    """A started manager with a single worker (each start method): every task runs on the same process."""
    tm = TaskManager(max_workers=1, start_method=request.param)
    await tm.startup()
    yield tm
    with trio.fail_after(30):
        await tm.shutdown(wait=False)


async def _cancel_gracefully_once_sent(tm: TaskManager, task_id: str, marker: Path) -> bool:
    """``cancel(grace=...)``; once its SIGTERM is out, create ``marker`` (the job's window closes)."""
    cancelled: list[bool] = []
    async with trio.open_nursery() as nursery:

        async def cancel() -> None:
            cancelled.append(await tm.cancel(task_id, grace=30))

        nursery.start_soon(cancel)
        await trio.testing.wait_all_tasks_blocked()  # cancel() sent SIGTERM before its first await
        marker.touch()
    return cancelled[0]


# --- 2. descriptors ----------------------------------------------------------------


def _links(pid: int) -> dict[int, str]:
    links: dict[int, str] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed since the listing
            continue
    return links


async def test_worker_keeps_no_inherited_descriptor(one: TaskManager, request: pytest.FixtureRequest) -> None:
    forkserver = request.node.callspec.params["one"] == "forkserver"
    with trio.fail_after(30):
        links = await one.run(open_fds)
    std = {links[fd] for fd in (0, 1, 2) if fd in links}
    others = {fd: link for fd, link in links.items() if fd > 2}
    tracker_fd = multiprocessing.resource_tracker._resource_tracker._fd  # type: ignore[attr-defined]
    assert tracker_fd is not None
    assert os.readlink(f"/proc/self/fd/{tracker_fd}") not in others.values(), "the resource tracker's pipe"
    if forkserver:
        server_pid = testing.forkserver_pid()
        assert server_pid is not None
        server = {link for fd, link in _links(server_pid).items() if fd > 2 and link not in std}
        assert not server & set(others.values()), "a descriptor shared with the forkserver"
    # What is left: copies of 0-2, and the worker's own five pipes (jobs, results,
    # the parent's liveness, cancel requests, job tickets; plus, when spawned, the
    # pipe its parent watches to see it exit).
    assert all(link in std or link.startswith("pipe:") for link in others.values()), others
    pipes = {link for link in others.values() if link.startswith("pipe:")} - std
    assert len(pipes) == (5 if forkserver else 6), others


async def test_job_can_still_use_multiprocessing(one: TaskManager) -> None:
    with trio.fail_after(60):
        assert await one.run(use_multiprocessing) == (7, 0)
        assert await one.run(use_multiprocessing) == (7, 0)


# --- 5. a job that forks -----------------------------------------------------------


@pytest.mark.parametrize(("how", "code"), [("return", 0), ("raise", 1), ("exit", 0)])
async def test_forked_child_never_answers_and_exits(one: TaskManager, how: str, code: int) -> None:
    with trio.fail_after(30):
        worker = await one.run(getpid)
        tid = one.submit(fork_and_leave, how)
        assert await one.result(tid) == ("parent", code)
        info = await one.info(tid)
        assert info.progress is None, "the forked child's progress reached the parent"
        assert info.worker_pid == worker
        assert await one.run(getpid) == worker  # the next task is served by the worker itself


# --- 6. leftover timers and signal dispositions ------------------------------------


async def test_timers_and_signals_are_reset_after_each_job(one: TaskManager) -> None:
    with trio.fail_after(30):
        fresh = await one.run(signal_state)
        assert fresh["timers"] == [(0.0, 0.0)] * 3
        await one.run(leave_timers_and_signals)
        assert await one.run(signal_state) == fresh
        # Graceful cancel (SIGTERM) still works on the next job.
        tid = one.submit(return_on_cancel)
        await wait_until(one, lambda: testing.snapshot(one, tid).progress_message == "waiting")
        assert not await one.cancel(tid, grace=30)  # the job returns on CancelRequested
        assert await one.result(tid) == "partial result"


async def test_initializer_handlers_stay_but_not_over_the_workers_own() -> None:
    async with TaskManager(max_workers=1, initializer=init_with_signals) as tm:
        with trio.fail_after(30):
            state = await tm.run(signal_state)
            assert state["timers"] == [(0.0, 0.0)] * 3
            assert "_on_usr1" in state["handlers"]["SIGUSR1"]  # the initializer's handler stays
            assert "_on_sigterm" in state["handlers"]["SIGTERM"]  # graceful cancel stays the worker's
            await tm.run(leave_timers_and_signals)
            assert await tm.run(signal_state) == state


async def test_leftover_alarm_does_not_kill_the_next_task(one: TaskManager) -> None:
    with trio.fail_after(30):
        worker = await one.run(getpid)
        await one.run(arm_alarm, 0.2)
        assert await one.run(outlive_leftover_alarm) == "survived"
        assert await one.run(getpid) == worker
    assert one.statistics().worker_crashes == 0


# --- 7. leftover non-daemon threads ---------------------------------------------------


async def test_retired_worker_exits_despite_non_daemon_thread() -> None:
    async with TaskManager(max_workers=1, max_tasks_per_worker=1) as tm:
        with trio.fail_after(30):
            pid = await tm.run(leave_non_daemon_thread)
        await wait_pids_gone([pid], 20)  # retired: its job pipe was closed, so it exits
        with trio.fail_after(30):
            assert await tm.run(getpid) != pid


# --- 8. progress from leftover threads ------------------------------------------------


async def test_leftover_thread_progress_is_not_the_next_tasks(one: TaskManager) -> None:
    with trio.fail_after(30):
        first = one.submit(leave_progress_thread)
        await one.result(first)
        tid = one.submit(progress_with_a_leftover_around)
        assert await one.result(tid) >= 2
        info = await one.info(tid)
        assert (info.progress, info.progress_message) == (0.25, "from this job's thread")


# --- 10. exceptions that fight back -----------------------------------------------------


@pytest.mark.parametrize("kind", ["error", "exit"])
async def test_exception_that_cannot_be_described_fails_its_task(one: TaskManager, kind: str) -> None:
    with trio.fail_after(30):
        worker = await one.run(getpid)
        tid = one.submit(raise_hostile, kind)
        if kind == "error":  # it cannot be pickled either
            with pytest.raises(RemoteError) as caught:
                await one.result(tid)
            assert caught.value.type_name == "jobs_worker.HostileError"
            assert "<str() of jobs_worker.HostileError failed>" in caught.value.message
            assert "raise_hostile" in caught.value.remote_traceback
        else:  # it crosses as itself
            with pytest.raises(SystemExit) as exited:
                await one.result(tid)
            assert type(exited.value).__name__ == "HostileExit"
        assert (await one.info(tid)).status is TaskStatus.FAILED
        assert await one.run(getpid) == worker
    assert one.statistics().worker_crashes == 0


async def test_unpicklable_result_that_cannot_be_described_fails_its_task(one: TaskManager) -> None:
    with trio.fail_after(30):
        worker = await one.run(getpid)
        tid = one.submit(return_hostile)
        with pytest.raises(UnpicklableResult, match="HostileValue"):
            await one.result(tid)
        assert await one.run(getpid) == worker
    assert one.statistics().worker_crashes == 0


# --- 19. graceful cancel right after RUNNING ---------------------------------------------


async def test_graceful_cancel_while_the_job_is_unpickled(one: TaskManager, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    tid = one.submit(return_arg, WaitWhenUnpickled(str(marker)))
    await wait_status(one, tid, TaskStatus.RUNNING)
    with trio.fail_after(30):
        assert await _cancel_gracefully_once_sent(one, tid, marker)
    info = await one.info(tid)
    assert info.status is TaskStatus.CANCELLED
    assert info.progress is None  # the job itself never ran
    with trio.fail_after(30):
        assert await one.run(return_arg, 5) == 5  # and the request does not leak into the next one


async def test_stray_sigterm_between_jobs_does_not_cancel_the_next(one: TaskManager) -> None:
    with trio.fail_after(30):
        worker = await one.run(getpid)
        os.kill(worker, signal.SIGTERM)
        assert await one.run(return_arg, 6) == 6


# --- 20. graceful cancel while trio is being imported --------------------------------------


async def test_graceful_cancel_while_trio_imports(one: TaskManager, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    with trio.fail_after(30):
        assert not await one.run(slow_down_trio_import, str(marker))
    tid = one.submit(async_triple, 1)
    await wait_until(one, lambda: testing.snapshot(one, tid).progress_message == "importing trio")
    with trio.fail_after(30):
        assert await _cancel_gracefully_once_sent(one, tid, marker)
        assert (await one.info(tid)).status is TaskStatus.CANCELLED
        assert await one.run(async_triple, 2) == 6  # trio is whole in that worker


# --- 23. async callable objects ------------------------------------------------------------


async def test_async_callable_objects_run_as_coroutines(one: TaskManager) -> None:
    with trio.fail_after(30):
        assert await one.run(AsyncCallable(4), 5) == 20
        assert await one.run(functools.partial(AsyncCallable(2), 5)) == 10
        assert await one.run(functools.partial(async_triple, 7)) == 21
