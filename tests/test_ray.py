"""The Ray backend keeps the TaskManager's promises, on a real local Ray (two CPUs).

One Ray for the whole module (starting one takes seconds); every test opens its
own TaskManager on it, and the module ends by checking that no Ray process is
left running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import trio

from conftest import pid_gone, wait_pids_gone, wait_status
from genro_tasks import (
    QueueFull,
    TaskCancelled,
    TaskManager,
    TaskStatus,
    TaskTimeout,
    UnpicklableResult,
    WorkerCrashed,
    testing,
)
from jobs import (
    announce_and_sleep,
    async_job,
    failing_task,
    progress_flood,
    progress_steps,
    progress_then_return,
    return_unpicklable,
    simple_task,
)
from jobs_ray import count_starts_then_exit, wait_for_path, where

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (.ci/run does)")
from genro_tasks.ray import RayBackend

pytestmark = pytest.mark.usefixtures("local_ray")


async def running_pid(tm: TaskManager, task_id: str) -> int:
    await wait_status(tm, task_id, TaskStatus.RUNNING)
    pid = (await tm.info(task_id)).worker_pid
    assert pid is not None
    return pid


async def test_a_job_runs_on_a_ray_worker_and_capacity_is_the_clusters_cpus(ray_tm: TaskManager) -> None:
    assert ray_tm.max_workers == 2  # num_cpus=2, one CPU per job
    with trio.fail_after(30):
        assert await ray_tm.run(simple_task, 21) == 42
        pid, node = await ray_tm.run(where)
    assert pid != os.getpid()
    assert node


async def test_pending_until_ray_really_starts_the_job(tmp_path: Path) -> None:
    # Two slots and one job prefetched on a two-CPU Ray: the third job is handed to Ray but waits in its queue.
    async with TaskManager(backend=RayBackend(max_workers=2, prefetch=1)) as tm:
        with trio.fail_after(30):
            first, second = tm.submit(announce_and_sleep, 60), tm.submit(announce_and_sleep, 60)
            await running_pid(tm, first)
            await running_pid(tm, second)
            third = tm.submit(simple_task, 1)
            assert testing.assigned_worker_pid(tm, third) is None
            with trio.move_on_after(0.5):  # Ray has no CPU for it: it must not look RUNNING meanwhile
                await wait_status(tm, third, TaskStatus.RUNNING)
            assert testing.status(tm, third) is TaskStatus.PENDING
            assert await tm.cancel(first)
            assert await tm.result(third) == 2
            info = await tm.info(third)
            assert info.started_at is not None
            assert info.worker_pid is not None
            await tm.shutdown(wait=False)


async def test_progress_is_routed_and_the_newest_value_wins(ray_tm: TaskManager) -> None:
    with trio.fail_after(30):
        task_id = ray_tm.submit(progress_then_return)
        assert await ray_tm.result(task_id) == "ok"
    info = await ray_tm.info(task_id)
    assert (info.progress, info.progress_message) == (1.0, "finished")


async def test_cancel_kills_the_ray_worker_before_it_returns(ray_tm: TaskManager) -> None:
    with trio.fail_after(30):
        task_id = ray_tm.submit(announce_and_sleep, 60)
        pid = await running_pid(ray_tm, task_id)
        assert await ray_tm.cancel(task_id)
    assert pid_gone(pid)  # dead when cancel() returned True
    assert testing.status(ray_tm, task_id) is TaskStatus.CANCELLED
    with pytest.raises(TaskCancelled):
        await ray_tm.result(task_id)
    with trio.fail_after(30):  # the slot is back
        assert await ray_tm.run(simple_task, 2) == 4


async def test_a_timeout_kills_the_job(ray_tm: TaskManager) -> None:
    with trio.fail_after(30):
        task_id = ray_tm.options(timeout=0.5).submit(announce_and_sleep, 60)
        pid = await running_pid(ray_tm, task_id)
        with pytest.raises(TaskTimeout):
            await ray_tm.result(task_id)
    assert pid_gone(pid)


async def test_run_cancelled_by_its_scope_kills_the_job(ray_tm: TaskManager) -> None:
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def caller() -> None:
            with scope:
                await ray_tm.run(announce_and_sleep, 60)

        nursery.start_soon(caller)
        with trio.fail_after(30):
            await testing.wait_until(ray_tm, lambda: bool(ray_tm.list_tasks(TaskStatus.RUNNING)))
            [info] = ray_tm.list_tasks(TaskStatus.RUNNING)
            assert info.worker_pid is not None
            scope.cancel()
    assert testing.status(ray_tm, info.task_id) is TaskStatus.CANCELLED
    with trio.fail_after(30):
        await wait_pids_gone([info.worker_pid], 20)


async def test_a_worker_death_fails_the_task_once_never_rerun(ray_tm: TaskManager, tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    with trio.fail_after(30):
        task_id = ray_tm.submit(count_starts_then_exit, str(starts))
        with pytest.raises(WorkerCrashed) as caught:
            await ray_tm.result(task_id)
    assert "Ray reported" in str(caught.value)
    assert starts.read_text() == "started\n"  # max_retries=0: Ray did not run it again
    with trio.fail_after(30):
        assert await ray_tm.run(simple_task, 3) == 6  # the slot is back


async def test_job_exceptions_keep_the_worker_frames(ray_tm: TaskManager) -> None:
    with trio.fail_after(30), pytest.raises(ValueError, match="intentionally") as caught:
        await ray_tm.run(failing_task)
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert "failing_task" in frames


async def test_an_unpicklable_result_and_an_async_job(ray_tm: TaskManager) -> None:
    with trio.fail_after(30):
        with pytest.raises(UnpicklableResult):
            await ray_tm.run(return_unpicklable)
        assert await ray_tm.run(async_job, 5, 0.0) == 50


async def test_priorities_and_backpressure_as_with_processes() -> None:
    async with TaskManager(backend=RayBackend(max_workers=1), max_queued=2) as tm:
        with trio.fail_after(30):
            blocker = tm.submit(announce_and_sleep, 60)
            await running_pid(tm, blocker)
            low = tm.options(priority=0).submit(simple_task, 1)
            high = tm.options(priority=10).submit(simple_task, 2)
            with pytest.raises(QueueFull):
                tm.submit(simple_task, 3)
            assert await tm.cancel(blocker)
            await tm.result(low)
            assert (await tm.info(high)).started_at <= (await tm.info(low)).started_at  # type: ignore[operator]


async def test_process_pool_options_are_refused_with_a_backend() -> None:
    with pytest.raises(ValueError, match="start_method, max_tasks_per_worker"):
        TaskManager(backend=RayBackend(), start_method="spawn", max_tasks_per_worker=3)
    with pytest.raises(ValueError, match=r"RayBackend\(max_workers=...\)"):
        TaskManager(4, backend=RayBackend())
    with pytest.raises(ValueError, match="max_retries"):
        RayBackend(task_options={"max_retries": 2})
    with pytest.raises(TypeError, match="backend must be an execution backend"):
        TaskManager(backend="ray")  # type: ignore[arg-type]
    async with TaskManager(backend=RayBackend()) as tm:
        with pytest.raises(ValueError, match="memory_limit task option does not apply"):
            tm.options(memory_limit=1 << 30).submit(simple_task, 1)
        with pytest.raises(ValueError, match="memory_limit task option does not apply"):
            async for _ in tm.options(memory_limit=1 << 30).map(simple_task, [1, 2]):
                pass  # pragma: no cover - refused before the first item is submitted
        assert tm.list_tasks() == []


async def test_a_backend_serves_one_manager() -> None:
    backend = RayBackend()
    async with TaskManager(backend=backend):
        pass
    with pytest.raises(RuntimeError, match="create a new RayBackend"):
        async with TaskManager(backend=backend):
            pass


def test_importing_genro_tasks_does_not_import_ray() -> None:
    code = "import sys, genro_tasks, genro_tasks_worker; assert 'ray' not in sys.modules, 'ray was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_progress_arrives_while_the_job_runs_and_is_coalesced(ray_tm: TaskManager) -> None:
    with trio.fail_after(30):
        task_id = ray_tm.submit(announce_and_sleep, 60)
        pid = await running_pid(ray_tm, task_id)
        await testing.wait_until(ray_tm, lambda: testing.snapshot(ray_tm, task_id).progress_message is not None)
        assert testing.snapshot(ray_tm, task_id).progress_message == f"pid={pid}"  # live, over the tracker
        assert await ray_tm.cancel(task_id)
        flood = ray_tm.submit(progress_flood, 200_000)
        assert await ray_tm.result(flood) == 200_000
    info = await ray_tm.info(flood)
    assert (info.progress, info.progress_message) == (1.0, "flood over")
    assert testing.change_count(ray_tm, flood) < 1_000  # coalesced: nowhere near one change per call


async def test_a_graceful_cancel_interrupts_the_job(ray_tm: TaskManager) -> None:
    # Ray interrupts the job when it next runs Python code: here, between two short sleeps.
    with trio.fail_after(30):
        task_id = ray_tm.submit(progress_steps, 1000, 0.05)
        await running_pid(ray_tm, task_id)
        assert await ray_tm.cancel(task_id, grace=20)
    info = await ray_tm.info(task_id)
    assert info.status is TaskStatus.CANCELLED
    assert info.error is not None
    assert "gracefully" in info.error


async def test_records_in_the_shared_store_jobs_on_ray(tmp_path: Path) -> None:
    """The Ray backend composes with the store: another process sees, reads and cancels its tasks."""
    db = tmp_path / "tasks.db"
    tm = TaskManager(backend=RayBackend(), store=db)
    with trio.fail_after(60):
        await tm.startup()
    try:
        with trio.fail_after(60):
            done = tm.submit(simple_task, 21)
            assert await tm.result(done) == 42
            sleeper = tm.submit(announce_and_sleep, 3600)
            pid = await running_pid(tm, sleeper)
            async with TaskManager(max_workers=0, store=db) as client:  # as another process would
                assert await client.result(done) == 42
                await wait_status(client, sleeper, TaskStatus.RUNNING)  # once the start is committed
                assert await client.cancel(sleeper)
            await wait_status(tm, sleeper, TaskStatus.CANCELLED)
            assert pid_gone(pid)  # the Ray worker that ran it was killed before CANCELLED was recorded
    finally:
        with trio.fail_after(30):
            await tm.shutdown(wait=False)
    async with TaskManager(max_workers=0, store=db) as later:  # after the application stopped
        assert await later.result(done) == 42
        assert (await later.info(sleeper)).status is TaskStatus.CANCELLED


async def test_a_job_cancelled_in_the_pass_that_dispatched_it_is_killed(ray_tm: TaskManager) -> None:
    # The jobs dispatched in one pass reach Ray together, after that pass: a cancel made
    # meanwhile must still reach each of them (and not be lost before its job exists in Ray).
    with trio.fail_after(30):
        task_ids = [ray_tm.submit(announce_and_sleep, 60) for _ in range(2)]
        assert testing.status(ray_tm, task_ids[0]) is TaskStatus.PENDING
        for task_id in task_ids:
            assert await ray_tm.cancel(task_id)
    assert [testing.status(ray_tm, task_id) for task_id in task_ids] == [TaskStatus.CANCELLED] * 2
    with trio.fail_after(30):  # both slots are back
        assert await ray_tm.run(simple_task, 2) == 4


async def test_with_prefetch_ends_gathered_together_each_reach_their_task(tmp_path: Path) -> None:
    # Six jobs beyond the two slots: the backend hands jobs over and collects their ends a few at
    # a time; every task still gets its own result, error, crash or cancellation.
    async with TaskManager(backend=RayBackend(max_workers=2, prefetch=6)) as tm:
        with trio.fail_after(60):
            ok = [tm.submit(simple_task, i) for i in range(40)]
            failing = [tm.submit(failing_task) for _ in range(3)]
            crashing = tm.submit(count_starts_then_exit, str(tmp_path / "starts"))
            sleeper = tm.submit(announce_and_sleep, 60)
            more = [tm.submit(simple_task, i) for i in range(40, 60)]
            assert [await tm.result(task_id) for task_id in ok] == [2 * i for i in range(40)]
            for task_id in failing:
                with pytest.raises(ValueError, match="intentionally"):
                    await tm.result(task_id)
            with pytest.raises(WorkerCrashed):
                await tm.result(crashing)
            await running_pid(tm, sleeper)
            assert await tm.cancel(sleeper)
            assert [await tm.result(task_id) for task_id in more] == [2 * i for i in range(40, 60)]
        assert testing.status(tm, sleeper) is TaskStatus.CANCELLED
        await tm.shutdown(wait=False)


async def test_with_prefetch_the_window_is_topped_up_in_batches(tmp_path: Path) -> None:
    # While every slot is busy and Ray holds jobs ahead, one job ending does not free a slot: the
    # window ahead is topped up a quarter of it at a time (one wake-up of the owner thread per batch).
    backend = RayBackend(max_workers=2, prefetch=8)
    async with TaskManager(backend=backend) as tm:
        with trio.fail_after(60):
            gates = {tm.submit(wait_for_path, str(tmp_path / f"gate{i}")): tmp_path / f"gate{i}" for i in range(10)}
            assert backend.free_slots() == 0  # two slots and eight ahead: all handed to Ray
            running: list[str] = []
            two_running = trio.Event()

            async def note_running(task_id: str) -> None:
                await testing.wait_for_status(tm, task_id, TaskStatus.RUNNING)
                running.append(task_id)
                if len(running) == 2:
                    two_running.set()

            async with trio.open_nursery() as nursery:
                for task_id in gates:
                    nursery.start_soon(note_running, task_id)
                await two_running.wait()
                nursery.cancel_scope.cancel()
            first, second = running[:2]
            gates[first].touch()
            assert await tm.result(first) == str(gates[first])
            assert backend.free_slots() == 0  # one place free ahead: less than a batch
            gates[second].touch()
            assert await tm.result(second) == str(gates[second])
            assert backend.free_slots() == 2  # two places: a batch
            for gate in gates.values():
                gate.touch()
            assert [await tm.result(task_id) for task_id in gates] == [str(gate) for gate in gates.values()]
        await tm.shutdown(wait=False)
