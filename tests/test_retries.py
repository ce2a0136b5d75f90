"""Opt-in retries and operator requeue, with real worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from conftest import wait_status, wait_until
from genro_tasks import TaskManager, TaskOptions, TaskStatus, TaskTimeout, WorkerCrashed, testing
from jobs import raise_custom
from jobs_many import count_attempt, crash_first, flaky, sleep_after_first, sleep_forever


async def test_no_retry_by_default(tasks: TaskManager, tmp_path: Path) -> None:
    tid = tasks.submit(flaky, str(tmp_path / "n"), 1)
    with trio.fail_after(30), pytest.raises(ValueError, match="run 1 fails"):
        await tasks.result(tid)
    info = await tasks.info(tid)
    assert (info.status, info.attempt, info.previous_errors) == (TaskStatus.FAILED, 1, ())


async def test_retries_until_an_attempt_succeeds_and_keeps_earlier_errors(tasks: TaskManager, tmp_path: Path) -> None:
    tid = tasks.options(retries=3, retry_backoff=0).submit(flaky, str(tmp_path / "n"), 2)
    with trio.fail_after(30):
        assert await tasks.result(tid) == 3
    info = await tasks.info(tid)
    assert info.status is TaskStatus.COMPLETED
    assert info.attempt == 3
    assert info.previous_errors == ("ValueError: run 1 fails", "ValueError: run 2 fails")
    assert info.error is None


async def test_watchers_see_pending_between_attempts(tasks: TaskManager, tmp_path: Path) -> None:
    tid = tasks.options(retries=1, retry_backoff=0.05).submit(flaky, str(tmp_path / "n"), 1)
    seen: list[tuple[TaskStatus, int]] = []
    with trio.fail_after(30):
        async for info in tasks.watch(tid):
            seen.append((info.status, info.attempt))
    assert seen == [
        (TaskStatus.PENDING, 1),
        (TaskStatus.RUNNING, 1),
        (TaskStatus.PENDING, 2),
        (TaskStatus.RUNNING, 2),
        (TaskStatus.COMPLETED, 2),
    ]


async def test_retries_run_out(tasks: TaskManager, tmp_path: Path) -> None:
    tid = tasks.options(retries=2, retry_backoff=0).submit(flaky, str(tmp_path / "n"), 5)
    with trio.fail_after(30), pytest.raises(ValueError, match="run 3 fails"):
        await tasks.result(tid)
    info = await tasks.info(tid)
    assert (info.status, info.attempt, len(info.previous_errors)) == (TaskStatus.FAILED, 3, 2)
    assert info.error == "ValueError: run 3 fails"


async def test_retry_on_other_types_does_not_retry(tasks: TaskManager, tmp_path: Path) -> None:
    tid = tasks.options(retries=3, retry_backoff=0, retry_on=(KeyError,)).submit(flaky, str(tmp_path / "n"), 1)
    with trio.fail_after(30), pytest.raises(ValueError, match="run 1 fails"):
        await tasks.result(tid)
    assert (await tasks.info(tid)).attempt == 1


async def test_retry_on_matches_types_and_names(tasks: TaskManager, tmp_path: Path) -> None:
    by_type = tasks.options(retries=1, retry_backoff=0, retry_on=(LookupError,)).submit(
        flaky, str(tmp_path / "a"), 1, "KeyError"
    )
    by_name = tasks.options(retries=1, retry_backoff=0, retry_on=("KeyError",)).submit(
        flaky, str(tmp_path / "b"), 1, "KeyError"
    )
    custom = tasks.options(retries=1, retry_backoff=0, retry_on=("jobs.CustomError",)).submit(raise_custom)
    with trio.fail_after(30):
        assert await tasks.result(by_type) == 2
        assert await tasks.result(by_name) == 2
        with pytest.raises(Exception, match="custom init signature"):
            await tasks.result(custom)
    assert (await tasks.info(custom)).attempt == 2


async def test_crash_is_retried_only_when_asked(tasks: TaskManager, tmp_path: Path) -> None:
    plain = tasks.options(retries=2, retry_backoff=0).submit(crash_first, str(tmp_path / "a"))
    opted = tasks.options(retries=2, retry_backoff=0, retry_on_crash=True).submit(crash_first, str(tmp_path / "b"))
    with trio.fail_after(30):
        with pytest.raises(WorkerCrashed):
            await tasks.result(plain)
        assert await tasks.result(opted) == 2
    info = await tasks.info(opted)
    assert info.attempt == 2
    assert info.previous_errors[0].startswith("WorkerCrashed:")


async def test_timeout_is_retried(tasks: TaskManager) -> None:
    tid = tasks.options(timeout=0.2, retries=1, retry_backoff=0).submit(sleep_forever)
    with trio.fail_after(30), pytest.raises(TaskTimeout):
        await tasks.result(tid)
    info = await tasks.info(tid)
    assert info.attempt == 2
    assert info.previous_errors[0].startswith("TaskTimeout:")


async def test_cancel_while_waiting_to_retry(tasks: TaskManager, tmp_path: Path) -> None:
    tid = tasks.options(retries=1, retry_backoff=3600, retry_backoff_max=3600).submit(flaky, str(tmp_path / "n"), 1)
    with trio.fail_after(30):
        await wait_until(tasks, lambda: testing.snapshot(tasks, tid).attempt == 2)
        assert await tasks.status(tid) is TaskStatus.PENDING
        assert await tasks.cancel(tid) is True
    assert await tasks.status(tid) is TaskStatus.CANCELLED


async def test_shutdown_cancels_a_task_waiting_to_retry(tmp_path: Path) -> None:
    tm = TaskManager(max_workers=1)
    async with tm:
        tid = tm.options(retries=1, retry_backoff=3600, retry_backoff_max=3600).submit(flaky, str(tmp_path / "n"), 1)
        with trio.fail_after(30):
            await wait_until(tm, lambda: testing.snapshot(tm, tid).attempt == 2)
            await tm.shutdown(wait=True, cancel_pending=True)
    assert testing.status(tm, tid) is TaskStatus.CANCELLED


def test_backoff_doubles_up_to_its_cap() -> None:
    options = TaskOptions(retries=5, retry_backoff=1, retry_backoff_max=5)
    assert [options.retry_delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert TaskOptions(retry_backoff=0).retry_delay(3) == 0


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("retries", -1, "retries must be an int >= 0"),
        ("retries", True, "retries must be an int >= 0"),
        ("retry_backoff", -1, "retry_backoff must be a non-negative"),
        ("retry_backoff_max", float("inf"), "retry_backoff_max must be a non-negative"),
        ("retry_on", (int,), "retry_on must be a tuple of exception types"),
        ("retry_on", "", "retry_on must be a tuple of exception types"),
        ("group", 3, "group must be a non-empty str"),
    ],
)
def test_bad_retry_options_are_refused_at_the_call(option: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TaskOptions(**{option: value})  # type: ignore[arg-type]


async def test_a_backoff_above_its_cap_is_refused_at_the_call(tasks: TaskManager) -> None:
    """Not cut to the cap in silence: a wait of an hour asked for would have been a minute."""
    with pytest.raises(ValueError, match=r"retry_backoff=3600 is above retry_backoff_max=60 \(the default\)") as err:
        tasks.options(retries=1, retry_backoff=3600)
    assert "pass retry_backoff_max=3600 (or more) too, or a smaller retry_backoff" in str(err.value)
    with pytest.raises(ValueError, match=r"retry_backoff=10 is above retry_backoff_max=5:"):
        TaskOptions(retry_backoff=10, retry_backoff_max=5)
    with pytest.raises(ValueError, match=r"retry_backoff=1 \(the default\) is above retry_backoff_max=0\.5:"):
        tasks.options(retry_backoff_max=0.5)  # against the default backoff, named in the message
    assert tasks.options(retry_backoff=3600, retry_backoff_max=3600) is not None
    assert TaskOptions(retry_backoff=0, retry_backoff_max=0).retry_delay(4) == 0
    assert tasks.list_tasks() == []  # nothing was queued by the refused calls


def test_retry_on_crash_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="retry_on_crash must be True or False"):
        TaskOptions(retry_on_crash=1)  # type: ignore[arg-type]


# ------------------------------------------------------------------ requeue
async def test_requeue_runs_a_finished_task_again_under_its_id(tasks: TaskManager, tmp_path: Path) -> None:
    tid = tasks.submit(count_attempt, str(tmp_path / "n"))
    with trio.fail_after(30):
        assert await tasks.result(tid) == 1
        assert await tasks.requeue(tid) == tid
        assert await tasks.result(tid) == 2
    info = await tasks.info(tid)
    assert (info.status, info.attempt) == (TaskStatus.COMPLETED, 2)
    assert info.previous_errors == ("requeued after completed",)
    assert tasks.statistics().tasks_completed == 2


async def test_requeue_of_a_failed_task_keeps_its_error(tasks: TaskManager, tmp_path: Path) -> None:
    tid = tasks.submit(flaky, str(tmp_path / "n"), 1)
    with trio.fail_after(30):
        await wait_status(tasks, tid, TaskStatus.FAILED)
        await tasks.requeue(tid)
        assert await tasks.result(tid) == 2
    assert (await tasks.info(tid)).previous_errors == ("requeued after failed (ValueError: run 1 fails)",)


async def test_requeued_task_is_kept_by_retention(tmp_path: Path) -> None:
    async with TaskManager(max_workers=2, max_finished=1) as tm:
        tid = tm.submit(sleep_after_first, str(tmp_path / "n"))
        with trio.fail_after(30):
            assert await tm.result(tid) == 1
            await tm.requeue(tid)
            await wait_status(tm, tid, TaskStatus.RUNNING)
            other = tm.submit(count_attempt, str(tmp_path / "m"))
            await tm.result(other)  # the one finished task retention keeps
            assert tid in [i.task_id for i in tm.list_tasks()]
            await tm.cancel(tid)


async def test_requeue_refuses_an_unfinished_task(tasks: TaskManager) -> None:
    tid = tasks.submit(sleep_forever)
    with pytest.raises(ValueError, match="only a finished task can be requeued"):
        await tasks.requeue(tid)
    with pytest.raises(KeyError, match="Task not found"):
        await tasks.requeue("nope")


async def test_no_new_attempt_once_shutdown_began(tmp_path: Path) -> None:
    tm = TaskManager(max_workers=1)
    async with tm:
        tid = tm.options(retries=3, retry_backoff=0).submit(flaky, str(tmp_path / "n"), 1)
        with trio.fail_after(30):
            await tm.shutdown(wait=True)  # the running attempt fails during the drain
    assert testing.status(tm, tid) is TaskStatus.FAILED
    assert testing.snapshot(tm, tid).attempt == 1


async def test_group_counts_follow_retries_and_requeue(tasks: TaskManager, tmp_path: Path) -> None:
    tid = tasks.options(group="rq", retries=1, retry_backoff=3600, retry_backoff_max=3600).submit(
        flaky, str(tmp_path / "n"), 1
    )
    with trio.fail_after(30):
        await wait_until(tasks, lambda: testing.snapshot(tasks, tid).attempt == 2)
        info = tasks.group_info("rq")  # waiting to retry: live, not FAILED
        assert (info.total, info.pending, info.failed) == (1, 1, 0)
        await tasks.cancel(tid)
        assert (tasks.group_info("rq").cancelled, tasks.group_info("rq").pending) == (1, 0)
        await tasks.requeue(tid)
        info = tasks.group_info("rq")  # live again (or, on a fast worker, already done: requeue() checkpoints)
        assert (info.total, info.cancelled, info.pending + info.running + info.completed) == (1, 0, 1)
        assert await tasks.result(tid) == 2
    info = tasks.group_info("rq")
    assert (info.total, info.completed, info.cancelled, info.is_finished) == (1, 1, 0, True)
