"""Startup, shutdown, and the no-orphans promise."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from conftest import pid_gone, statuses, wait_pids_gone, wait_status, wait_until
from genro_tasks import ManagerClosed, TaskCancelled, TaskManager, TaskStatus, testing
from jobs import interrupt_self, noisy, simple_task, slow_task, trio_loaded

HERE = Path(__file__).parent


async def test_async_with() -> None:
    with trio.fail_after(30):
        async with TaskManager(2) as tm:
            assert tm.is_running
            assert await tm.run(simple_task, 2) == 4
        assert not tm.is_running


async def test_startup_twice_is_noop_and_restart_refused() -> None:
    tm = TaskManager(1)
    with trio.fail_after(30):
        await tm.startup()
        await tm.startup()
        await tm.shutdown()
        await tm.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            await tm.startup()


async def test_shutdown_wait_lets_everything_finish() -> None:
    tm = TaskManager(2)
    with trio.fail_after(30):
        await tm.startup()
        ids = [tm.submit(slow_task, 0.2) for _ in range(5)]
        await wait_status(tm, ids[0], TaskStatus.RUNNING)
        workers = list(testing.worker_pids(tm))
        await tm.shutdown(wait=True)
        assert statuses(tm, ids) == [TaskStatus.COMPLETED] * 5
        assert all(pid_gone(p) for p in workers)
        with pytest.raises(ManagerClosed, match="shut down"):
            tm.submit(simple_task, 1)
        assert await tm.result(ids[0]) == "done"
        assert (await tm.info(ids[4])).status is TaskStatus.COMPLETED


async def test_shutdown_cancel_pending() -> None:
    tm = TaskManager(2)
    with trio.fail_after(30):
        await tm.startup()
        ids = [tm.submit(slow_task, 0.3) for _ in range(5)]
        await wait_until(tm, lambda: statuses(tm, ids).count(TaskStatus.RUNNING) == 2)
        await tm.shutdown(wait=True, cancel_pending=True)
    assert statuses(tm, ids) == [TaskStatus.COMPLETED] * 2 + [TaskStatus.CANCELLED] * 3


async def test_shutdown_no_wait_kills_running() -> None:
    tm = TaskManager(2)
    with trio.fail_after(30):
        await tm.startup()
        ids = [tm.submit(slow_task, 60) for _ in range(4)]
        await wait_until(tm, lambda: statuses(tm, ids).count(TaskStatus.RUNNING) == 2)
        workers = list(testing.worker_pids(tm))
        await tm.shutdown(wait=False)
        assert statuses(tm, ids) == [TaskStatus.CANCELLED] * 4
        assert all(pid_gone(p) for p in workers)
        with pytest.raises(TaskCancelled):
            await tm.result(ids[0])


async def test_cancelled_shutdown_still_kills_everything() -> None:
    tm = TaskManager(2)
    await tm.startup()
    ids = [tm.submit(slow_task, 60) for _ in range(2)]
    await wait_until(tm, lambda: statuses(tm, ids).count(TaskStatus.RUNNING) == 2)
    workers = list(testing.worker_pids(tm))
    with trio.move_on_after(0.2):
        await tm.shutdown(wait=True)  # would wait 60 s
    assert statuses(tm, ids) == [TaskStatus.CANCELLED] * 2
    assert all(pid_gone(p) for p in workers)


async def test_async_with_error_kills_running() -> None:
    async def body() -> None:
        async with TaskManager(1) as tm:
            holder.append(tm)
            await wait_status(tm, tm.submit(slow_task, 60, task_id="t"), TaskStatus.RUNNING)
            raise ZeroDivisionError

    holder: list[TaskManager] = []
    with trio.fail_after(30), pytest.raises(ZeroDivisionError):
        await body()
    tm = holder[0]
    tid = "t"
    assert testing.status(tm, tid) is TaskStatus.CANCELLED


async def test_no_trio_in_workers(tasks: TaskManager) -> None:
    with trio.fail_after(20):
        assert await tasks.run(trio_loaded) is False


async def test_workers_ignore_sigint(tasks: TaskManager) -> None:
    with trio.fail_after(20):
        assert await tasks.run(interrupt_self) == "survived"


async def test_print_cannot_corrupt_protocol(tasks: TaskManager, capfd: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(20):
        assert await tasks.run(noisy, 50) == 50
        assert await tasks.run(simple_task, 1) == 2


async def test_spawn_start_method() -> None:
    with trio.fail_after(60):
        async with TaskManager(1, start_method="spawn") as tm:
            assert await tm.run(simple_task, 8) == 16
            assert await tm.run(trio_loaded) is False
    with pytest.raises(ValueError, match="fork"):
        TaskManager(1, start_method="fork")


async def test_parent_sigkill_leaves_no_orphans(tmp_path: Path) -> None:
    """SIGKILL the parent while workers sleep in time.sleep(120): all gone within 2 s."""
    # A SIGKILLed parent cannot remove multiprocessing's temporary directory:
    # let it make that under this test's own, which pytest removes.
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(HERE / "orphan_parent.py"), str(HERE)],
        stdout=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "orphan_parent.py exited early"
                line += chunk
        info = json.loads(line)
        pids = [*info["workers"], info["grandchild"], info["forkserver"]]
        assert len(info["workers"]) == 3
        assert not any(pid_gone(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        await wait_pids_gone(pids, limit=2.0)
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()


async def test_workers_import_the_main_module_only_when_needed() -> None:
    """multiprocessing would re-run the main script in every worker; we do it lazily."""
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, str(HERE / "main_script.py")],
            capture_stdout=True,
            capture_stderr=True,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stderr.decode().splitlines()
    bodies = [json.loads(line)["module_body_ran_in"] for line in lines if "module_body" in line]
    stages = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert stages[0]["stage"] == "module jobs done"
    assert stages[0]["no_trio"] is True  # the script imports trio; its workers did not
    assert stages[1] == {"stage": "main job done", "worker": stages[1]["worker"], "value": 42}
    assert stages[2] == {"stage": "initializer from main", "state": ["from-main"]}
    # The body ran in the parent, in the worker that ran the job defined in the
    # script, and in the initializer's worker: not in each of the 3 workers started.
    assert len(bodies) == 3
    assert stages[1]["worker"] in bodies[1:]


async def test_shutdown_while_starting_fails_startup_instead_of_hanging() -> None:
    from jobs import slow_init

    tm = TaskManager(1, initializer=slow_init, initargs=(1.0,))
    outcome: list[BaseException] = []

    async def start() -> None:
        try:
            await tm.startup()
        except ManagerClosed as exc:
            outcome.append(exc)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start)
            await trio.testing.wait_all_tasks_blocked()
            await tm.shutdown()
    assert len(outcome) == 1
    assert "shut down while it was starting" in str(outcome[0])
    assert not tm.is_running


async def test_concurrent_startups_share_one_start() -> None:
    tm = TaskManager(1)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tm.startup)
            nursery.start_soon(tm.startup)
        assert tm.is_running
        assert len(testing.worker_pids(tm)) == 1
        await tm.shutdown()


async def test_a_daemonic_process_may_run_a_manager() -> None:
    """multiprocessing forbids daemons to have children; ours cannot be orphaned, so they may."""
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, str(HERE / "daemon_parent.py")],
            capture_stdout=True,
            capture_stderr=True,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["1024"]


async def test_workers_are_not_multiprocessing_children(tasks: TaskManager) -> None:
    """The application's own multiprocessing (active_children(), its join at exit) never sees our workers."""
    assert len(testing.worker_pids(tasks)) == 2
    assert multiprocessing.active_children() == []
