"""The shared store attacked: races between managers on one file, with real workers and a real file."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio

import jobs_store
import jobs_store_attack as jobs
import jobs_store_many
from genro_tasks import SQLiteStore, TaskManager, TaskStatus, testing
from test_asgi import api_app, running, sse_events


def _at_attempt(tm: TaskManager, task_id: str, attempt: int) -> bool:
    return any(t.task_id == task_id and t.attempt == attempt for t in tm.list_tasks())


async def test_one_task_id_submitted_by_two_managers_at_once_runs_once(tmp_path: Path) -> None:
    """Two managers accept the same chosen id before either insert is committed: the job runs once."""
    db = tmp_path / "tasks.db"
    calls = tmp_path / "calls"
    async with TaskManager(max_workers=1, store=db) as a, TaskManager(max_workers=1, store=db) as b:
        # Both managers are idle, and neither has seen the other's submission yet.
        assert a.submit(jobs.append_pid, str(calls), "a", task_id="report-42") == "report-42"
        assert b.submit(jobs.append_pid, str(calls), "b", task_id="report-42") == "report-42"
        with trio.fail_after(30):
            from_a = await a.result("report-42")
            from_b = await b.result("report-42")
            await a.flush()
            await b.flush()
        # One task in the store, one run, and both managers tell the same story.
        assert from_a == from_b
        assert (await a.info("report-42")).status is TaskStatus.COMPLETED
        assert (await b.info("report-42")).status is TaskStatus.COMPLETED
    lines = calls.read_text().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(f" {from_a}")
    async with TaskManager(max_workers=0, store=db) as later:
        assert await later.result("report-42") == from_a


async def test_result_of_a_task_another_process_just_forgot_says_so(tmp_path: Path) -> None:
    """B still lists a finished task that A's clear_completed removed from the file: result() says it is gone."""
    db = tmp_path / "tasks.db"
    calls = tmp_path / "calls"
    async with TaskManager(max_workers=1, store=db) as a:
        tid = a.submit(jobs.append_pid, str(calls), "done")
        with trio.fail_after(30):
            assert await a.result(tid) == "done"
            await a.flush()
        # B polls the file rarely: it knows the task as COMPLETED, its value not loaded yet.
        async with TaskManager(max_workers=0, store=SQLiteStore(db, poll_interval=60)) as b:
            assert (await b.info(tid)).status is TaskStatus.COMPLETED
            assert a.clear_completed() == 1
            with trio.fail_after(30):
                await a.flush()
                with pytest.raises(KeyError, match="forgot"):
                    await b.result(tid)


async def test_hard_cancel_from_another_process_overrides_a_graceful_one_in_progress(tmp_path: Path) -> None:
    """As in one process, cancel() without grace kills a job that ignores an earlier cancel(grace=...)."""
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=1, store=db) as owner, TaskManager(max_workers=0, store=db) as other:
        tid = other.submit(jobs.ignore_graceful_cancel)
        with trio.fail_after(30):
            await testing.wait_until(other, lambda: other.list_tasks(TaskStatus.RUNNING) != [])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(other.cancel, tid, grace=3600))
                # The job got the graceful request (SIGTERM) and keeps going.
                await testing.wait_until(
                    other, lambda: [t.progress for t in other.list_tasks(TaskStatus.RUNNING)] == [0.5]
                )
                assert await other.cancel(tid) is True  # hard: the owner kills it now
        assert (await owner.info(tid)).status is TaskStatus.CANCELLED


async def test_unstorable_metadata_is_refused_at_the_call_and_the_store_keeps_working(tmp_path: Path) -> None:
    """Metadata must be pickled to be stored: a value that cannot be is a TypeError at submit, naming it."""
    db = tmp_path / "tasks.db"
    calls = tmp_path / "calls"
    async with TaskManager(max_workers=1, store=db) as tm:
        with pytest.raises(TypeError, match=r"metadata.*cannot be stored"):
            tm.submit(jobs.append_pid, str(calls), "x", task_id="bad-meta", metadata={"lock": threading.Lock()})
        assert "bad-meta" not in {t.task_id for t in tm.list_tasks()}
        with trio.fail_after(30):
            assert await tm.run(jobs.append_pid, str(calls), "after") == "after"
            await tm.flush()


async def test_text_that_is_not_utf8_from_a_job_is_stored_and_the_store_keeps_working(tmp_path: Path) -> None:
    """An error or progress message naming a non-UTF-8 file (lone surrogates) reaches the other process."""
    db = tmp_path / "tasks.db"
    calls = tmp_path / "calls"
    async with TaskManager(max_workers=1, store=db) as owner, TaskManager(max_workers=0, store=db) as other:
        with trio.fail_after(30):
            failing = other.submit(jobs.fail_on_undecodable_name)
            with pytest.raises(FileNotFoundError, match="caf"):
                await other.result(failing)
            assert "caf" in ((await other.info(failing)).error or "")

            slow = other.submit(jobs.progress_on_undecodable_name)
            await testing.wait_until(other, lambda: [t.progress for t in other.list_tasks(TaskStatus.RUNNING)] == [0.5])
            assert "caf" in ((await other.info(slow)).progress_message or "")
            assert await other.cancel(slow) is True

            # The store still works, in both processes.
            assert await other.run(jobs.append_pid, str(calls), "after") == "after"
            await owner.flush()


async def test_an_id_or_group_that_cannot_be_stored_is_refused_at_the_call(tmp_path: Path) -> None:
    """A task_id or group with lone surrogates is a ValueError at submit, naming it; the store keeps working."""
    db = tmp_path / "tasks.db"
    calls = tmp_path / "calls"
    name = os.fsdecode(b"caf\xe9")
    async with TaskManager(max_workers=1, store=db) as tm:
        with pytest.raises(ValueError, match="task_id"):
            tm.submit(jobs.append_pid, str(calls), "x", task_id=name)
        with pytest.raises(ValueError, match="group"):
            tm.options(group=name).submit(jobs.append_pid, str(calls), "x")
        assert tm.list_tasks() == []
        with trio.fail_after(30):
            assert await tm.run(jobs.append_pid, str(calls), "after") == "after"
            await tm.flush()


async def test_a_priority_or_retries_too_large_to_store_is_refused_at_the_call(tmp_path: Path) -> None:
    """SQLite stores 64-bit integers: a larger priority or retries is a ValueError at submit, naming it."""
    db = tmp_path / "tasks.db"
    calls = tmp_path / "calls"
    async with TaskManager(max_workers=1, store=db) as tm:
        with pytest.raises(ValueError, match="priority"):
            tm.options(priority=2**63).submit(jobs.append_pid, str(calls), "x")
        with pytest.raises(ValueError, match="retries"):
            tm.options(retries=2**63).submit(jobs.append_pid, str(calls), "x")
        assert tm.list_tasks() == []
        with trio.fail_after(30):
            assert await tm.options(priority=-(2**63)).run(jobs.append_pid, str(calls), "after") == "after"
            await tm.flush()


async def test_shutdown_gives_a_task_waiting_to_retry_back_to_the_queue(tmp_path: Path) -> None:
    """A task waiting out its retry back-off is queued (PENDING): shutdown neither waits for it nor cancels it."""
    db = tmp_path / "tasks.db"
    counter = tmp_path / "calls"
    async with TaskManager(max_workers=0, store=db) as client:
        for wait in (True, False):
            counter.unlink(missing_ok=True)
            async with TaskManager(max_workers=1, store=db) as first:
                tid = client.options(retries=1, retry_backoff=3600, retry_backoff_max=3600).submit(
                    jobs_store_many.fail_until, str(counter), 1
                )
                with trio.fail_after(30):
                    await testing.wait_until(client, functools.partial(_at_attempt, client, tid, 2))
                with trio.fail_after(20):
                    await first.shutdown(wait=wait)  # must not wait an hour for the retry
            assert (await client.info(tid)).status is TaskStatus.PENDING
            async with TaskManager(max_workers=1, store=db):  # another process runs the next attempt
                with trio.fail_after(30):
                    assert await client.result(tid) == 2
            assert (await client.info(tid)).attempt == 2


async def test_a_store_locked_by_another_process_says_so(tmp_path: Path) -> None:
    """Opening a store another process keeps write-locked beyond busy_timeout names the lock, not the directory."""
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=0, store=db):
        pass  # create it
    holder = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", holder, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        with trio.fail_after(30):
            assert (await proc.stdout.receive_some()).startswith(b"locked")
            tm = TaskManager(max_workers=0, store=SQLiteStore(db, busy_timeout=0.1))
            with pytest.raises(RuntimeError, match=r"locked.*another process.*busy_timeout") as caught:
                await tm.startup()
        assert "directory" not in str(caught.value)
    finally:
        assert proc.stdin is not None
        await proc.stdin.aclose()
        with trio.fail_after(30):
            await proc.wait()


async def test_a_requeue_from_a_process_that_has_not_seen_the_last_one_does_not_rerun_the_task(
    tmp_path: Path,
) -> None:
    """Two operators requeue one task from two processes: the later requeue, from a mirror that has not
    seen the earlier one yet, must not reset the attempt already running elsewhere (it ran twice)."""
    db = tmp_path / "tasks.db"
    calls = tmp_path / "calls"
    gate = tmp_path / "gate"
    # b reads the file only when asked (poll_interval=60): its view of the task stays behind.
    async with (
        TaskManager(max_workers=0, store=SQLiteStore(db, poll_interval=60)) as b,
        TaskManager(max_workers=1, store=db) as c,
    ):
        tid = b.submit(jobs.count_then_wait, str(calls), str(gate))
        with trio.fail_after(30):
            await b.flush()
            await testing.wait_for_status(c, tid, TaskStatus.COMPLETED)
            await c.flush()
            with pytest.raises(KeyError):
                await b.info("no-such-task")  # an unknown id makes b read the file once
            assert (await b.info(tid)).status is TaskStatus.COMPLETED

            await c.requeue(tid)  # c runs attempt 2 (it waits for the gate)
            await testing.wait_until(c, lambda: [(t.attempt, t.progress) for t in c.list_tasks()] == [(2, 0.5)])
            assert len(calls.read_text().splitlines()) == 2
            await b.requeue(tid)  # b still sees attempt 1 finished
            await b.flush()
            gate.touch()
            await testing.wait_until(c, lambda: [t.status for t in c.list_tasks()] == [TaskStatus.COMPLETED])
            await c.flush()
            assert (await c.info(tid)).attempt == 2
            assert await c.result(tid) == 2
        assert len(calls.read_text().splitlines()) == 2
    # The file agrees: attempt 2 completed, nothing left queued to run a third time.
    async with TaskManager(max_workers=0, store=db) as later:
        info = await later.info(tid)
        assert (info.status, info.attempt) == (TaskStatus.COMPLETED, 2)


async def test_the_event_stream_of_a_task_submitted_by_another_process_an_instant_ago(tmp_path: Path) -> None:
    """GET /tasks/{id}/events finds a task another process just submitted (durable), as GET /tasks/{id} does."""
    db = tmp_path / "tasks.db"
    # The served manager reads the file only when asked (poll_interval=60): its mirror is behind.
    served = TaskManager(max_workers=1, store=SQLiteStore(db, poll_interval=60))
    async with running(api_app(served)) as url, TaskManager(max_workers=0, store=db) as other:
        tid = other.submit(jobs_store.short, 0.05)
        with trio.fail_after(30):
            await other.flush()
            events = await sse_events(url, f"/api/tasks/{tid}/events", lambda e: False)
        assert events[-1]["status"] == "completed"
