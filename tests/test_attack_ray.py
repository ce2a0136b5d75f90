"""Attacks on the Ray backend, on a real local Ray: what a new user, an operator and an attacker would try.

One Ray for the module (as in test_ray.py); the attacks that need a process not
yet joined to Ray (a wrong address, Ray missing, Ray shut down under the
manager) run a small script in a subprocess.
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from conftest import pid_gone, wait_pids_gone, wait_status
from genro_tasks import RemoteError, TaskManager, TaskStatus, WorkerCrashed, testing
from jobs import (
    announce_and_sleep,
    big_result,
    exit_zero,
    raise_base_exception,
    raise_keyboard_interrupt,
    raise_system_exit,
    raise_unpicklable,
    simple_task,
    spawn_child_and_sleep,
)
from jobs_ray import fork_and_sleep, hold_the_gil, ignore_interrupts, progress_from_a_thread, raise_a_ghost

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (.ci/run does)")
from genro_tasks.ray import RayBackend

pytestmark = pytest.mark.usefixtures("local_ray")

TESTS = Path(__file__).resolve().parent


async def progress_message(tm: TaskManager, task_id: str) -> str:
    await testing.wait_until(tm, lambda: testing.snapshot(tm, task_id).progress_message is not None)
    message = testing.snapshot(tm, task_id).progress_message
    assert message is not None
    return message


async def run_script(code: str, tmp_path: Path, limit: float = 50) -> str:
    """Run ``code`` in a new Python process (Ray's files under ``tmp_path``); its stdout and stderr.

    A script still running after ``limit`` seconds prints its threads' stacks and exits (failing the test).
    """
    from ray_helpers import assert_no_ray_left

    script = tmp_path / "script.py"
    header = f"import faulthandler\nfaulthandler.dump_traceback_later({limit}, exit=True)\n"
    script.write_text(header + textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    env["RAY_TMPDIR"] = str(tmp_path)
    done = await trio.run_process(
        [sys.executable, str(script)], env=env, capture_stdout=True, stderr=-2, check=False, cwd=str(tmp_path)
    )
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, output
    assert_no_ray_left(str(tmp_path))
    return output


# ---------------------------------------------------------------- defects (each failed before its fix)


async def test_a_tracker_host_that_is_not_this_machine_is_named_at_startup() -> None:
    with trio.fail_after(30), pytest.raises(RuntimeError, match=r"198\.51\.100\.7.*tracker_host must be an address"):
        async with TaskManager(backend=RayBackend(tracker_host="198.51.100.7")):
            pass  # pragma: no cover - the startup fails


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"num_cpu": 1}, "num_cpu"),
        ({"num_cpus": -1}, "cannot be negative"),
        ({"memory": "lots"}, "memory"),
        ({"num_returns": 2}, "num_returns"),
    ],
)
def test_bad_task_options_are_refused_at_the_call(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=r"RayBackend\(task_options=\.\.\.\)") as caught:
        RayBackend(task_options=options)
    assert named in str(caught.value)


async def test_without_ray_the_import_says_how_to_install_it(tmp_path: Path) -> None:
    code = """
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        try:
            import genro_tasks.ray
        except ImportError as exc:
            print("ImportError:", exc)
    """
    with trio.fail_after(30):
        output = await run_script(code, tmp_path, limit=20)
    assert "pip install 'genro-tasks[ray]'" in output


async def test_a_wrong_cluster_address_fails_at_once_naming_the_option_and_the_fix(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = f"""
        import trio
        from genro_tasks import TaskManager
        from genro_tasks.ray import RayBackend

        async def main():
            with trio.fail_after(30):  # ray.init alone retries for minutes
                try:
                    async with TaskManager(backend=RayBackend(address="127.0.0.1:{port}")):
                        pass
                except RuntimeError as exc:
                    print("RuntimeError:", exc)

        trio.run(main)
    """
    with trio.fail_after(80):
        output = await run_script(code, tmp_path, limit=45)
    assert f"RuntimeError: RayBackend could not join Ray (address='127.0.0.1:{port}')" in output
    assert "ray start --head" in output


async def test_ray_shut_down_under_the_manager_fails_its_tasks_and_nothing_hangs(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp_path = tmp_path_factory.mktemp("down")  # Ray's socket paths must stay short
    code = f"""
        import ray, trio
        from genro_tasks import ManagerClosed, SupervisorFailed, TaskManager, TaskStatus, WorkerCrashed, testing
        from genro_tasks.ray import RayBackend
        from jobs import announce_and_sleep

        async def main():
            ray.init(num_cpus=2, _temp_dir={str(tmp_path)!r}, include_dashboard=False, log_to_driver=False)
            with trio.fail_after(40):
                async with TaskManager(backend=RayBackend()) as tm:
                    ids = [tm.submit(announce_and_sleep, 600) for _ in range(4)]
                    for task_id in ids[:2]:
                        await testing.wait_for_status(tm, task_id, TaskStatus.RUNNING)
                    await trio.to_thread.run_sync(ray.shutdown)  # the application, under the manager
                    for task_id in ids:
                        try:
                            await tm.result(task_id)
                        except (WorkerCrashed, SupervisorFailed) as exc:
                            assert "ray.shutdown()" in str(exc), exc
                            print(testing.status(tm, task_id).value, type(exc).__name__)
                    try:
                        tm.submit(announce_and_sleep, 0)
                    except ManagerClosed as exc:
                        assert "ray.shutdown()" in str(exc), exc
                        print("refused:", exc)
            print("Ray started again:", ray.is_initialized())

        trio.run(main)
    """
    with trio.fail_after(90):
        output = await run_script(code, tmp_path)
    assert output.count("failed") >= 4, output
    assert "refused:" in output, output
    assert "Ray started again: False" in output, output


# ---------------------------------------------------------------- attacks that held


async def test_ctrl_c_in_the_application_while_ray_jobs_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp_path = tmp_path_factory.mktemp("ki")  # Ray's socket paths must stay short
    code = f"""
        import os, signal, trio
        from genro_tasks import TaskManager, TaskStatus, testing
        from genro_tasks.ray import RayBackend
        from jobs import announce_and_sleep

        async def main():
            options = dict(num_cpus=2, _temp_dir={str(tmp_path)!r}, log_to_driver=False)
            async with TaskManager(backend=RayBackend(init_options=options)) as tm:
                ids = [tm.submit(announce_and_sleep, 600) for _ in range(4)]
                await testing.wait_for_status(tm, ids[0], TaskStatus.RUNNING)
                os.kill(os.getpid(), signal.SIGINT)
                await trio.sleep(60)

        try:
            trio.run(main)
        except KeyboardInterrupt:
            print("KeyboardInterrupt reached the application")
    """
    with trio.fail_after(90):
        output = await run_script(code, tmp_path)  # and the Ray the backend started is gone
    assert "KeyboardInterrupt reached the application" in output, output


async def test_exits_and_base_exceptions_fail_only_their_task(ray_tm: TaskManager) -> None:
    with trio.fail_after(60):
        for job, raised in (
            (raise_system_exit, SystemExit),
            (exit_zero, SystemExit),
            (raise_keyboard_interrupt, KeyboardInterrupt),
            (raise_base_exception, BaseException),
        ):
            task_id = ray_tm.submit(job)
            with pytest.raises(raised):
                await ray_tm.result(task_id)
            assert testing.status(ray_tm, task_id) is TaskStatus.FAILED
        assert await ray_tm.run(simple_task, 2) == 4


async def test_exceptions_that_cannot_travel_fail_their_task_with_the_text(ray_tm: TaskManager) -> None:
    with trio.fail_after(60):
        with pytest.raises(RemoteError, match="cannot cross processes"):
            await ray_tm.run(raise_unpicklable)
        with pytest.raises(RemoteError, match=r"ghost_module_of_the_worker\._Ghost: boo"):
            await ray_tm.run(raise_a_ghost)  # its class does not exist in the manager
        assert await ray_tm.run(simple_task, 2) == 4


async def test_a_big_result_and_progress_from_a_thread_of_the_job(ray_tm: TaskManager) -> None:
    with trio.fail_after(60):
        assert len(await ray_tm.run(big_result, 64)) == 64 << 20
        task_id = ray_tm.submit(progress_from_a_thread, 1000)
        assert await ray_tm.result(task_id) == 1000
    info = await ray_tm.info(task_id)
    assert (info.progress, info.progress_message) == (1.0, "thread 1000")


@pytest.mark.parametrize("job", [fork_and_sleep, spawn_child_and_sleep])
async def test_cancel_kills_a_job_and_its_children(ray_tm: TaskManager, job: Callable[[], None]) -> None:
    with trio.fail_after(30):
        task_id = ray_tm.submit(job)
        child = int((await progress_message(ray_tm, task_id)).split("=")[1])
        pid = testing.assigned_worker_pid(ray_tm, task_id)
        assert pid is not None
        assert await ray_tm.cancel(task_id)
        assert pid_gone(pid)
        await wait_pids_gone([child], 20)


async def test_cancel_kills_a_job_that_holds_the_gil(ray_tm: TaskManager) -> None:
    with trio.fail_after(30):
        task_id = ray_tm.submit(hold_the_gil)
        await progress_message(ray_tm, task_id)
        pid = testing.assigned_worker_pid(ray_tm, task_id)
        assert pid is not None
        assert await ray_tm.cancel(task_id)
    assert pid_gone(pid)


async def test_a_graceful_cancel_the_job_ignores_ends_in_a_kill(ray_tm: TaskManager) -> None:
    with trio.fail_after(30):
        task_id = ray_tm.submit(ignore_interrupts, 600)
        await progress_message(ray_tm, task_id)
        pid = testing.assigned_worker_pid(ray_tm, task_id)
        assert pid is not None
        assert await ray_tm.cancel(task_id, grace=0.5)
    assert pid_gone(pid)
    assert testing.status(ray_tm, task_id) is TaskStatus.CANCELLED


@pytest.mark.parametrize("wait", [False, True])
async def test_shutdown_with_many_jobs_queued_and_prefetched(wait: bool) -> None:
    tm = TaskManager(backend=RayBackend(prefetch=4))
    with trio.fail_after(60):
        await tm.startup()
        if wait:
            ids = [tm.submit(simple_task, i) for i in range(100)]
        else:
            ids = [tm.submit(announce_and_sleep, 60) for _ in range(50)]
            await wait_status(tm, ids[0], TaskStatus.RUNNING)
        await tm.shutdown(wait=wait)
    expected = TaskStatus.COMPLETED if wait else TaskStatus.CANCELLED
    assert [testing.status(tm, task_id) for task_id in ids] == [expected] * len(ids)


async def test_two_managers_on_one_ray_keep_to_their_own_jobs() -> None:
    with trio.fail_after(60):
        async with (
            TaskManager(backend=RayBackend(max_workers=1)) as a,
            TaskManager(backend=RayBackend(max_workers=1)) as b,
        ):
            job_a, job_b = a.submit(announce_and_sleep, 60), b.submit(announce_and_sleep, 60)
            await wait_status(a, job_a, TaskStatus.RUNNING)
            await wait_status(b, job_b, TaskStatus.RUNNING)
            assert await a.cancel(job_a)
            assert testing.status(b, job_b) is TaskStatus.RUNNING
            assert await a.run(simple_task, 1) == 2
            assert await b.cancel(job_b)
            assert await b.run(simple_task, 2) == 4


async def test_retries_on_crash_are_the_callers_explicit_choice(ray_tm: TaskManager, tmp_path: Path) -> None:
    from jobs_ray import count_starts_then_exit

    starts = tmp_path / "starts"
    with trio.fail_after(30):
        with pytest.raises(WorkerCrashed):
            await ray_tm.run(count_starts_then_exit, str(starts))
        assert starts.read_text().count("started") == 1  # never re-run silently
        task_id = ray_tm.options(retries=1, retry_on_crash=True).submit(count_starts_then_exit, str(starts))
        with pytest.raises(WorkerCrashed):
            await ray_tm.result(task_id)
    assert starts.read_text().count("started") == 3  # the one run, then this task's two attempts


async def test_a_job_asking_for_resources_no_node_has_stays_pending_and_can_be_cancelled() -> None:
    async with TaskManager(backend=RayBackend(task_options={"resources": {"no_such_resource": 1}})) as tm:
        with trio.fail_after(30):
            task_id = tm.options(timeout=0.2).submit(simple_task, 1)
            with trio.move_on_after(1):  # Ray keeps it queued: it must not look started meanwhile
                await wait_status(tm, task_id, TaskStatus.RUNNING)
            assert testing.status(tm, task_id) is TaskStatus.PENDING  # the timeout counts from the start
            assert await tm.cancel(task_id)
        assert testing.status(tm, task_id) is TaskStatus.CANCELLED
