"""Results and errors crossing the process boundary."""

from __future__ import annotations

import threading
import traceback

import pytest
import trio

from genro_tasks import RemoteError, TaskManager, TaskStatus, UnpicklableJob, UnpicklableResult, testing
from jobs import (
    CustomError,
    add,
    chained_failure,
    echo,
    failing_task,
    raise_custom,
    raise_keyboard_interrupt,
    raise_system_exit,
    raise_unpicklable,
    return_unpicklable,
    simple_task,
)


async def test_remote_traceback_has_worker_frames(tasks: TaskManager) -> None:
    tid = tasks.submit(failing_task)
    with trio.fail_after(20), pytest.raises(ValueError, match="Task failed intentionally") as info:
        await tasks.result(tid)
    frames = traceback.extract_tb(info.value.__traceback__)
    names = [f.name for f in frames]
    assert "failing_task" in names
    assert any(f.filename.endswith("jobs.py") for f in frames)


async def test_chained_cause_survives(tasks: TaskManager) -> None:
    tid = tasks.submit(chained_failure)
    with trio.fail_after(20), pytest.raises(RuntimeError, match="outer failure") as info:
        await tasks.result(tid)
    cause = info.value.__cause__
    assert isinstance(cause, KeyError)
    assert "chained_failure" in [f.name for f in traceback.extract_tb(cause.__traceback__)]


async def test_custom_exception_type(tasks: TaskManager) -> None:
    tid = tasks.submit(raise_custom)
    with trio.fail_after(20), pytest.raises(CustomError) as info:
        await tasks.result(tid)
    assert info.value.code == 7
    assert "custom init signature" in str(info.value)


async def test_unpicklable_exception_becomes_remote_error(tasks: TaskManager) -> None:
    tid = tasks.submit(raise_unpicklable)
    with trio.fail_after(20), pytest.raises(RemoteError) as info:
        await tasks.result(tid)
    err = info.value
    assert err.type_name == "jobs.UnpicklableError"
    assert err.message == "this exception cannot cross processes"
    assert "raise_unpicklable" in err.remote_traceback
    assert (await tasks.info(tid)).error == "jobs.UnpicklableError: this exception cannot cross processes"
    # The worker survived.
    with trio.fail_after(20):
        assert await tasks.run(simple_task, 1) == 2


async def test_unpicklable_result(tasks: TaskManager) -> None:
    tid = tasks.submit(return_unpicklable)
    with trio.fail_after(20), pytest.raises(UnpicklableResult, match="cannot be pickled"):
        await tasks.result(tid)
    assert await tasks.status(tid) is TaskStatus.FAILED
    pids = set(testing.worker_pids(tasks))
    with trio.fail_after(20):
        assert await tasks.run(simple_task, 1) == 2
    assert pids == set(testing.worker_pids(tasks))


async def test_unpicklable_job_refused_by_submit(tasks: TaskManager) -> None:
    with pytest.raises(UnpicklableJob, match=r"lambda|local|attribute"):
        tasks.submit(lambda: 1, task_id="lam")
    with pytest.raises(UnpicklableJob, match="cannot be sent"):
        tasks.submit(echo, threading.Lock(), task_id="ev")  # unpicklable argument
    assert tasks.list_tasks() == []
    with pytest.raises(KeyError):
        await tasks.info("lam")


async def test_duplicate_task_id(tasks: TaskManager) -> None:
    tasks.submit(simple_task, 1, task_id="dup")
    with pytest.raises(ValueError, match="'dup' is already in use"):
        tasks.submit(simple_task, 1, task_id="dup")
    assert len(tasks.list_tasks()) == 1


async def test_bad_arguments(tasks: TaskManager) -> None:
    with pytest.raises(ValueError, match="timeout"):
        tasks.options(timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        tasks.options(timeout=float("nan"))
    with pytest.raises(ValueError, match="task_id"):
        tasks.submit(simple_task, 1, task_id="")
    with pytest.raises(TypeError, match="not callable"):
        tasks.submit(42)  # type: ignore[arg-type]
    assert tasks.list_tasks() == []


async def test_kwargs_and_big_values(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        assert await tasks.run(add, 1, 2, scale=10) == 30
        blob = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB, crosses the big-body path
        assert await tasks.run(echo, blob) == blob
        nested = {"a": [1, 2, {"b": (3, 4)}], "s": "x" * 100_000}
        assert await tasks.run(echo, nested) == nested


async def test_system_exit_and_keyboard_interrupt_fail_the_task(tasks: TaskManager) -> None:
    with trio.fail_after(20):
        with pytest.raises(SystemExit):
            await tasks.run(raise_system_exit)
        with pytest.raises(KeyboardInterrupt):
            await tasks.run(raise_keyboard_interrupt)
        assert await tasks.run(simple_task, 2) == 4
