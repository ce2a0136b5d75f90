"""Bad input is refused at the call, naming the option; every call works from where it is documented to."""

from __future__ import annotations

import functools
import math
import pickle
import sys
import types
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from genro_tasks import (
    QueueFull,
    SupervisorFailed,
    TaskCancelled,
    TaskManager,
    TaskStatus,
    TaskTimeout,
    UnpicklableJob,
    UnpicklableResult,
    WorkerCrashed,
    report_progress,
)
from jobs import echo, exit_hard, simple_task, slow_task
from jobs_api import triple

TESTS = Path(__file__).parent


# ------------------------------------------------------------------ #14 options
def test_report_progress_refuses_huge_numbers_with_value_error() -> None:
    for value in (10**400, -(10**400)):
        with pytest.raises(ValueError, match="fraction"):
            report_progress(value)


@pytest.mark.parametrize("value", [True, 0, -1, math.nan, math.inf, "60", 10**400])
def test_finished_ttl_must_be_a_real_duration(value: object) -> None:
    with pytest.raises(ValueError, match="finished_ttl"):
        TaskManager(1, finished_ttl=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_workers", True),
        ("max_workers", 0),
        ("max_queued", 1.5),
        ("max_tasks_per_worker", True),
        ("max_finished", 0),
        ("start_method", None),
        ("start_method", "fork"),
    ],
)
def test_constructor_options_are_checked(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        TaskManager(**{option: value})  # type: ignore[arg-type]


def test_constructor_initargs_must_be_a_sequence() -> None:
    with pytest.raises(TypeError, match="initargs"):
        TaskManager(1, initializer=simple_task, initargs=5)  # type: ignore[arg-type]


async def test_largest_memory_limit_is_accepted_by_the_worker(tasks: TaskManager) -> None:
    with pytest.raises(ValueError, match="memory_limit"):
        tasks.options(memory_limit=2**63)
    with pytest.raises(ValueError, match="memory_limit"):
        tasks.options(memory_limit=2**62 + 1)
    with trio.fail_after(30):
        assert await tasks.options(memory_limit=2**62).run(simple_task, 2) == 4


async def test_cancel_grace_and_result_timeout_refuse_bools(tasks: TaskManager) -> None:
    tid = tasks.submit(slow_task, 60)
    for grace in (True, -1, math.nan, math.inf, "1"):
        with pytest.raises(ValueError, match="grace"):
            await tasks.cancel(tid, grace=grace)  # type: ignore[arg-type]
    for timeout in (True, -1, math.nan, "1"):
        with pytest.raises(ValueError, match="timeout"):
            await tasks.result(tid, timeout=timeout)  # type: ignore[arg-type]
    assert (await tasks.info(tid)).status is not TaskStatus.CANCELLED
    with trio.fail_after(30):
        assert await tasks.cancel(tid) is True


@pytest.mark.parametrize("value", [math.nan, True, 0, -3, 2.5, "10"])
async def test_change_stream_max_pending_is_checked(tasks: TaskManager, value: object) -> None:
    with pytest.raises(ValueError, match="max_pending"):
        tasks.open_change_stream(max_pending=value)  # type: ignore[arg-type]


async def test_shutdown_flags_must_be_bools(tasks: TaskManager) -> None:
    with pytest.raises(TypeError, match="wait"):
        await tasks.shutdown(wait="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cancel_pending"):
        await tasks.shutdown(cancel_pending=1)  # type: ignore[arg-type]
    assert tasks.is_running


async def test_bad_metadata_is_refused(tasks: TaskManager) -> None:
    with pytest.raises(TypeError, match="metadata"):
        tasks.submit(simple_task, 1, metadata=5)  # type: ignore[arg-type]
    assert tasks.list_tasks() == []


async def test_full_queue_reports_the_bad_argument_first() -> None:
    async with TaskManager(1, max_queued=1) as tm:
        blocker = tm.submit(slow_task, 60, task_id="blocker")
        tm.submit(simple_task, 1, task_id="queued")
        with pytest.raises(QueueFull):
            tm.submit(simple_task, 1)
        # Bad arguments raise their own error, at once, whatever the queue holds.
        with pytest.raises(ValueError, match="task_id"):
            tm.submit(simple_task, 1, task_id="")
        with pytest.raises(ValueError, match="already in use"):
            tm.submit(simple_task, 1, task_id="queued")
        with pytest.raises(UnpicklableJob):
            tm.submit(simple_task, lambda: 0)
        with trio.fail_after(10):
            with pytest.raises(ValueError, match="task_id"):
                await tm.submit_wait(simple_task, 1, task_id="")
            with pytest.raises(ValueError, match="already in use"):
                await tm.submit_wait(simple_task, 1, task_id=blocker)
            with pytest.raises(UnpicklableJob):
                await tm.submit_wait(simple_task, lambda: 0)
            with pytest.raises(TypeError, match="not callable"):
                await tm.submit_wait(42)  # type: ignore[arg-type]
        assert {i.task_id for i in tm.list_tasks()} == {"blocker", "queued"}
        with trio.fail_after(30):
            await tm.cancel(blocker)


# ------------------------------------------------------------------ #15 sync code
def test_retention_queries_work_from_sync_code() -> None:
    tm = TaskManager(1, finished_ttl=3600)

    async def main() -> None:
        async with tm:
            with trio.fail_after(30):
                assert await tm.run(simple_task, 2) == 4

    trio.run(main)
    # trio.run has returned: no trio loop is running in this thread any more.
    assert [i.status for i in tm.list_tasks()] == [TaskStatus.COMPLETED]
    stats = tm.statistics()
    assert (stats.tasks_tracked, stats.tasks_completed) == (1, 1)


# ------------------------------------------------------------------ #16 threads
async def test_calls_from_another_thread_are_refused(tasks: TaskManager) -> None:
    with pytest.raises(RuntimeError, match=r"trio\.from_thread\.run_sync"):
        await trio.to_thread.run_sync(tasks.submit, simple_task, 1)
    for call in (tasks.clear_completed, tasks.list_tasks, tasks.statistics):
        with pytest.raises(RuntimeError, match=call.__name__):
            await trio.to_thread.run_sync(call)
    assert tasks.list_tasks() == []

    # The documented way: hop into the manager's trio thread.
    def from_a_thread() -> str:
        return trio.from_thread.run_sync(functools.partial(tasks.submit, simple_task, 3, task_id="hop"))

    assert await trio.to_thread.run_sync(from_a_thread) == "hop"
    with trio.fail_after(30):
        assert await tasks.result("hop") == 6


def test_calls_from_another_trio_run_are_refused() -> None:
    tm = TaskManager(1)
    refused: list[str] = []

    async def other_run(tid: str) -> None:
        attempts: list[Callable[[], object]] = [
            lambda: tm.submit(simple_task, 1),
            lambda: tm.watch(tid),
            lambda: tm.open_change_stream(),
            tm.clear_completed,
            tm.list_tasks,
            tm.statistics,
        ]
        for attempt in attempts:
            with pytest.raises(RuntimeError, match="outside the trio run") as info:
                attempt()
            refused.append(str(info.value))
        waits: list[Callable[[], Awaitable[object]]] = [
            lambda: tm.result(tid),
            lambda: tm.cancel(tid),
            lambda: tm.run(simple_task, 1),
        ]
        for wait in waits:
            with pytest.raises(RuntimeError, match="outside the trio run") as info:
                await wait()
            refused.append(str(info.value))

    async def main() -> None:
        async with tm:
            tid = tm.submit(slow_task, 60)
            await trio.to_thread.run_sync(trio.run, other_run, tid)
            assert (await tm.info(tid)).status is not TaskStatus.CANCELLED
            assert [i.task_id for i in tm.list_tasks()] == [tid]
            with trio.fail_after(30):
                assert await tm.cancel(tid)

    trio.run(main)
    assert len(refused) == 9


# ------------------------------------------------------------------ #17 main module
async def _python(*argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    with trio.fail_after(120):
        proc = await trio.run_process(
            [sys.executable, *argv],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=TESTS,
        )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


MAIN_JOB_SCRIPT = """\
import trio
from genro_tasks import TaskManager

def job(n):
    return n + 1

async def main():
    async with TaskManager(1) as tm:
        tm.submit(job, 1)

trio.run(main)
"""

MODULE_JOB_SCRIPT = """\
import trio
from genro_tasks import TaskManager
from jobs_api import triple

async def main():
    async with TaskManager(1) as tm:
        print("result", await tm.run(triple, 14))

trio.run(main)
"""


def _says_why(stderr: str) -> bool:
    return "UnpicklableJob" in stderr and "__main__.job" in stderr and "module" in stderr


async def test_job_from_python_c_is_refused_clearly() -> None:
    code, _, err = await _python("-c", MAIN_JOB_SCRIPT)
    assert code != 0
    assert _says_why(err), err


async def test_job_from_stdin_is_refused_clearly() -> None:
    code, _, err = await _python("-", stdin=MAIN_JOB_SCRIPT.encode())
    assert code != 0
    assert _says_why(err), err
    assert "FileNotFoundError" not in err


async def test_importable_jobs_work_from_python_c_and_stdin() -> None:
    code, out, err = await _python("-c", MODULE_JOB_SCRIPT)
    assert (code, out) == (0, "result 42\n"), err
    code, out, err = await _python("-", stdin=MODULE_JOB_SCRIPT.encode())
    assert (code, out) == (0, "result 42\n"), err


async def test_interactive_session() -> None:
    session = (
        "import trio\n"
        "from genro_tasks import TaskManager\n"
        "from jobs_api import triple\n"
        "def job(n):\n"
        "    return n + 1\n"
        "\n"
        "async def main(func):\n"
        "    async with TaskManager(1) as tm:\n"
        "        print('result', await tm.run(func, 14))\n"
        "\n"
        "trio.run(main, triple)\n"
        "trio.run(main, job)\n"
    )
    _, out, err = await _python("-i", "-q", stdin=session.encode())
    assert "result 42" in out, err
    assert _says_why(err), err


class Point:
    """Stands in for a class defined in an unimportable main script."""

    def __init__(self, x: int) -> None:
        self.x = x


@pytest.fixture
def fileless_main(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Make ``__main__`` look as under ``python -c`` (no file, no spec), holding ``init`` and ``Point``."""
    main = sys.modules["__main__"]
    monkeypatch.delattr(main, "__file__", raising=False)
    monkeypatch.setattr(main, "__spec__", None)

    def init() -> None:
        pass

    for obj, name in ((init, "init"), (Point, "Point")):
        monkeypatch.setattr(obj, "__module__", "__main__")
        if obj.__qualname__ != name:
            monkeypatch.setattr(obj, "__qualname__", name)
        monkeypatch.setattr(main, name, obj, raising=False)
    return main


def test_initializer_from_unimportable_main_is_refused(fileless_main: types.ModuleType) -> None:
    with pytest.raises(UnpicklableJob, match=r"initializer .*__main__\.init"):
        TaskManager(1, initializer=fileless_main.init)
    with pytest.raises(UnpicklableJob, match=r"__main__\.Point"):
        TaskManager(1, initializer=triple, initargs=(Point(1),))


async def test_argument_from_unimportable_main_is_refused(tasks: TaskManager, fileless_main: types.ModuleType) -> None:
    with pytest.raises(UnpicklableJob, match=r"__main__\.Point.*module file"):
        tasks.submit(triple, [fileless_main.Point(2)])
    with pytest.raises(UnpicklableJob, match=r"__main__\.Point"):
        tasks.submit(fileless_main.Point, 2)
    # A string that merely mentions __main__ is not a reference to it.
    with trio.fail_after(30):
        assert await tasks.run(echo, "__main__") == "__main__"
    assert len(tasks.list_tasks()) == 1


# ------------------------------------------------------------------ #18 statuses
async def test_list_tasks_takes_status_values_in_any_case(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        tid = tasks.submit(simple_task, 1)
        await tasks.result(tid)
    for status in (TaskStatus.COMPLETED, "completed", "COMPLETED", "Completed"):
        assert [i.task_id for i in tasks.list_tasks(status)] == [tid]
    assert tasks.list_tasks("RUNNING") == []
    for bad in ("done", 3, TaskStatus):
        with pytest.raises(ValueError, match="'pending', 'running', 'completed', 'failed', 'cancelled'"):
            tasks.list_tasks(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ #12 exceptions
async def test_every_waiter_gets_its_own_exception(tasks: TaskManager) -> None:
    timed_out = tasks.options(timeout=0.2).submit(slow_task, 60)
    crashed = tasks.submit(exit_hard, 3)
    for tid, kind in ((timed_out, TaskTimeout), (crashed, WorkerCrashed)):
        caught: list[BaseException] = []

        async def wait(tid: str = tid, kind: type[BaseException] = kind, caught: list[BaseException] = caught) -> None:
            with pytest.raises(kind) as info:
                await tasks.result(tid)
            caught.append(info.value)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                nursery.start_soon(wait)
            await wait()
        assert len(caught) == 3
        assert len({id(e) for e in caught}) == 3
        assert len({str(e) for e in caught}) == 1
        assert len({id(e.__traceback__) for e in caught}) == 3


@pytest.mark.parametrize(
    "exc",
    [
        TaskCancelled("t1", "cancelled by shutdown"),
        TaskTimeout("t2", 1.5),
        WorkerCrashed("t3", 123, -9),
        WorkerCrashed("t3", 123, 1, "it sent a corrupt message"),
        SupervisorFailed("the supervisor failed: boom"),
        UnpicklableResult("Task 't4' returned something odd"),
    ],
)
def test_exceptions_pickle_with_their_message(exc: BaseException) -> None:
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert str(copy) == str(exc)
    assert vars(copy) == vars(exc)
