"""The shared store: several real processes on one real SQLite file, SIGKILLs and restarts."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import jobs_store
from conftest import pid_gone, wait_pids_gone
from genro_tasks import SQLiteStore, TaskLost, TaskManager, TaskStatus, testing

APP = str(Path(__file__).with_name("store_app.py"))


class App:
    """A TaskManager in another process (tests/store_app.py), on the same store."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self._out = proc.stdout
        self._buffer = b""
        self.pid = proc.pid

    async def line(self) -> str:
        while b"\n" not in self._buffer:
            chunk = await self._out.receive_some()
            if not chunk:
                raise EOFError("the app ended")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)


@asynccontextmanager
async def app(*args: str) -> AsyncIterator[App]:
    proc = await trio.lowlevel.open_process([sys.executable, APP, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield App(proc)
    finally:
        with trio.CancelScope(shield=True):
            if proc.stdin is not None:
                await proc.stdin.aclose()
            with trio.move_on_after(20):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@asynccontextmanager
async def server(path: Path, workers: int = 2) -> AsyncIterator[App]:
    async with app("serve", str(path), str(workers)) as other:
        with trio.fail_after(30):
            assert (await other.line()).startswith("ready")
        yield other


def logical_size(db: Path) -> int:
    """The database's size as every reader sees it (the main file plus the pages the WAL adds)."""
    conn = sqlite3.connect(db)
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    return int(pages) * int(size)


async def wait_status(tm: TaskManager, task_id: str, status: TaskStatus, limit: float = 20) -> None:
    with trio.fail_after(limit):
        await testing.wait_for_status(tm, task_id, status)


async def test_submitted_here_runs_there(tmp_path: Path) -> None:
    """A client-only manager submits; the other process claims and runs; result, info and list here."""
    db = tmp_path / "tasks.db"
    async with server(db) as other, TaskManager(max_workers=0, store=db) as tm:
        ids = [tm.submit(jobs_store.double, i, metadata={"n": i}) for i in range(20)]
        with trio.fail_after(30):
            assert [await tm.result(t) for t in ids] == [2 * i for i in range(20)]
        info = await tm.info(ids[3])
        assert info.status is TaskStatus.COMPLETED
        assert info.metadata == {"n": 3}
        assert info.started_at is not None
        assert info.completed_at is not None
        assert info.worker_pid not in (None, os.getpid())
        assert {i.task_id for i in tm.list_tasks(TaskStatus.COMPLETED)} == set(ids)
        pid = await tm.result(tm.submit(jobs_store.where))
        assert pid_gone(pid) is False
        assert pid != other.pid


async def test_error_raised_there_is_raised_here(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with server(db), TaskManager(max_workers=0, store=db) as tm:
        tid = tm.submit(jobs_store.fail, "boom")
        with trio.fail_after(30), pytest.raises(ValueError, match="boom"):
            await tm.result(tid)
        info = await tm.info(tid)
        assert info.status is TaskStatus.FAILED
        assert info.error == "ValueError: boom"
        assert info.traceback is not None
        assert "jobs_store.py" in info.traceback


async def test_watch_and_cancel_across_processes(tmp_path: Path) -> None:
    """Progress of a job running in the other process reaches watch() here; cancel() here kills it there."""
    db = tmp_path / "tasks.db"
    async with server(db), TaskManager(max_workers=0, store=db) as tm:
        tid = tm.submit(jobs_store.announce_and_sleep)
        seen = []
        with trio.fail_after(30):
            async for info in tm.watch(tid):
                seen.append(info.status)
                if info.progress_message:
                    break
        assert seen[0] is TaskStatus.PENDING
        assert seen[-1] is TaskStatus.RUNNING
        worker = int(info.progress_message.split("=")[1]) if info.progress_message else 0
        assert info.worker_pid == worker
        assert not pid_gone(worker)
        with trio.fail_after(10):
            assert await tm.cancel(tid) is True
        final = await tm.info(tid)
        assert final.status is TaskStatus.CANCELLED
        assert final.error is not None
        assert "killed" in final.error
        assert pid_gone(worker)
        assert await tm.cancel(tid) is False  # already finished


async def test_cancel_queued_task_from_another_process(tmp_path: Path) -> None:
    """A task nobody claimed yet is cancelled by one conditional update, never run."""
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=0, store=db) as submitter:
        tid = submitter.submit(jobs_store.double, 1)
        await submitter.flush()
        async with TaskManager(max_workers=0, store=db) as other:
            with trio.fail_after(10):
                assert await other.cancel(tid) is True
            assert (await other.info(tid)).error == "cancelled while queued"
        await wait_status(submitter, tid, TaskStatus.CANCELLED)


async def test_sigkill_of_an_owner(tmp_path: Path) -> None:
    """Its RUNNING task becomes FAILED TaskLost; its claimed tasks run elsewhere; nothing runs twice."""
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=0, store=db) as tm:
        # In the file before the owner starts: it claims the first two at once (one for its free
        # worker, one ahead of it), so one task is claimed and never started, whatever the timing.
        running = tm.submit(jobs_store.announce_and_sleep)
        queued = [tm.submit(jobs_store.double, i) for i in range(5)]
        await tm.flush()
        async with server(db, workers=1) as owner:
            await wait_status(tm, running, TaskStatus.RUNNING)
            with trio.fail_after(20):
                # Claimed ahead of its busy worker: still PENDING to everyone.
                await testing.wait_until(tm, lambda: tm.statistics().tasks_queued < 5)
            worker = (await tm.info(running)).worker_pid
            owner.kill()
            with trio.fail_after(10):  # the bound of the promise: noticed by a live process within 10 s
                await testing.wait_for_status(tm, running, TaskStatus.FAILED)
        with pytest.raises(TaskLost, match="died while it ran"):
            await tm.result(running)
        assert worker is not None
        await wait_pids_gone([worker], 10)  # no orphan either: the worker died with its parent
        assert [(await tm.info(t)).status for t in queued] == [TaskStatus.PENDING] * 5
        async with TaskManager(max_workers=2, store=db) as runner:
            with trio.fail_after(30):
                assert [await runner.result(t) for t in queued] == [2 * i for i in range(5)]
        with trio.fail_after(10):
            assert [await tm.result(t) for t in queued] == [2 * i for i in range(5)]


async def test_restart_keeps_finished_tasks_and_runs_pending_ones(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=1, store=SQLiteStore(db, synchronous="FULL")) as tm:
        done = tm.submit(jobs_store.double, 21, metadata={"kind": "answer"})
        failed = tm.submit(jobs_store.fail, "kept")
        assert await tm.result(done) == 42
        first = await tm.info(done)
    async with TaskManager(max_workers=0, store=db) as client:
        pending = client.submit(jobs_store.double, 5)
    async with TaskManager(max_workers=1, store=db) as tm:
        assert await tm.info(done) == first
        assert await tm.result(done) == 42
        with pytest.raises(ValueError, match="kept"):
            await tm.result(failed)
        with trio.fail_after(30):
            assert await tm.result(pending) == 10
        assert {i.task_id for i in tm.list_tasks()} == {done, failed, pending}


async def test_task_lost_is_noticed_by_the_next_startup(tmp_path: Path) -> None:
    """With no live process left, the next manager to open the store records the lost task."""
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=0, store=db) as tm, server(db, workers=1) as owner:
        tid = tm.submit(jobs_store.announce_and_sleep)
        await wait_status(tm, tid, TaskStatus.RUNNING)
        await tm.shutdown()  # nobody alive watches the owner any more
        owner.kill()
        await owner.proc.wait()
    async with TaskManager(max_workers=0, store=db) as later:
        info = await later.info(tid)
        assert info.status is TaskStatus.FAILED
        assert info.error is not None
        assert info.error.startswith("TaskLost: ")
        with pytest.raises(TaskLost):
            await later.result(tid)


async def test_a_large_result_crosses_processes(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    size = 64 * 1024 * 1024
    async with server(db, workers=1), TaskManager(max_workers=0, store=db) as tm:
        with trio.fail_after(60):
            value = await tm.result(tm.submit(jobs_store.big, size))
        assert len(value) == size
        assert value[:1] == b"x"


async def test_retention_applies_to_the_file(tmp_path: Path) -> None:
    """max_finished bounds the rows (and so the file): freed pages are reused."""
    db = tmp_path / "tasks.db"
    batch, result_size = 20, 20_000
    async with TaskManager(max_workers=2, store=db, max_finished=20) as tm:
        sizes = []
        for _ in range(4):
            for _ in range(10):  # in batches: at most a batch or two of results await retention at once
                ids = [tm.submit(jobs_store.big, result_size) for _ in range(batch)]
                with trio.fail_after(60):
                    for t in ids:
                        await tm.result(t)
                await tm.flush()
                with trio.fail_after(10):
                    await testing.wait_until(tm, lambda: len(tm.list_tasks()) <= 20)
            sizes.append(logical_size(db))
        tm.clear_completed()
        await tm.flush()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 0
    # 800 results of 20 kB went through; the file holds about what one round needed at its peak.
    assert max(sizes[1:]) <= sizes[0] + 2 * batch * result_size, sizes


def test_bad_store_arguments_are_refused_at_the_call(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="store must be None"):
        TaskManager(store=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="leave store=None"):
        TaskManager(store=":memory:")
    with pytest.raises(ValueError, match="synchronous must be 'NORMAL' or 'FULL'"):
        SQLiteStore(tmp_path / "x.db", synchronous="OFF")
    with pytest.raises(ValueError, match="poll_interval"):
        SQLiteStore(tmp_path / "x.db", poll_interval=0)
    with pytest.raises(ValueError, match=r"max_workers=0 .* needs a store"):
        TaskManager(max_workers=0)


async def test_unopenable_store_says_why(tmp_path: Path) -> None:
    tm = TaskManager(max_workers=1, store=tmp_path / "missing" / "tasks.db")
    with pytest.raises(RuntimeError, match=r"cannot open the task store .*directory exists"):
        await tm.startup()


async def test_cross_process_cancel_beats_a_half_second_job(tmp_path: Path) -> None:
    """Ordering, not a clock: cancel() here returns while a 0.5 s job started there just before is still running."""
    db = tmp_path / "tasks.db"
    async with server(db), TaskManager(max_workers=0, store=db) as tm:
        for _ in range(3):
            victim = tm.submit(jobs_store.announce_and_sleep)
            await wait_status(tm, victim, TaskStatus.RUNNING)
            witness = tm.submit(jobs_store.short, 0.5)
            await wait_status(tm, witness, TaskStatus.RUNNING)
            with trio.fail_after(10):
                assert await tm.cancel(victim) is True
            assert (await tm.status(witness)) is TaskStatus.RUNNING
            with trio.fail_after(10):
                assert await tm.result(witness) == "done"


async def test_graceful_cancel_across_processes(tmp_path: Path) -> None:
    """cancel(grace=...) here asks the job there to stop (CancelRequested), and it ends CANCELLED."""
    db = tmp_path / "tasks.db"
    async with server(db), TaskManager(max_workers=0, store=db) as tm:
        tid = tm.submit(jobs_store.stop_when_asked)
        with trio.fail_after(20):
            async for info in tm.watch(tid):
                if info.progress_message == "waiting":
                    break
        with trio.fail_after(10):
            assert await tm.cancel(tid, grace=5) is True
        info = await tm.info(tid)
        assert info.error is not None
        assert "gracefully" in info.error
        assert "CancelRequested" in info.error


async def test_run_here_returns_what_ran_there(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with server(db), TaskManager(max_workers=0, store=db) as tm:
        with trio.fail_after(30):
            assert await tm.run(jobs_store.double, 4) == 8
            with pytest.raises(ValueError, match="raised there"):
                await tm.run(jobs_store.fail, "raised there")


async def test_run_cancelled_here_kills_the_job_there(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with server(db), TaskManager(max_workers=0, store=db) as tm:
        with trio.move_on_after(0.5):  # the caller gives up: the task must die with it
            await tm.run(jobs_store.announce_and_sleep)
        (info,) = tm.list_tasks()
        assert info.status is TaskStatus.CANCELLED


async def test_shutdown_gives_claimed_tasks_back_to_the_queue(tmp_path: Path) -> None:
    """A stopping process keeps none of the shared queue: what it claimed but never started runs elsewhere."""
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=0, store=db) as tm:
        # In the file before the server starts: it claims the first two at once (see test_sigkill_of_an_owner).
        busy = tm.submit(jobs_store.announce_and_sleep)
        waiting = [tm.submit(jobs_store.double, i) for i in range(3)]
        await tm.flush()
        async with server(db, workers=1):
            await wait_status(tm, busy, TaskStatus.RUNNING)
            with trio.fail_after(20):
                await testing.wait_until(tm, lambda: tm.statistics().tasks_queued < 3)  # claimed there
        # The server shut down (wait=False): its running task was cancelled, its claimed one given back.
        assert (await tm.status(busy)) is TaskStatus.CANCELLED
        assert [(await tm.status(t)) for t in waiting] == [TaskStatus.PENDING] * 3
        async with TaskManager(max_workers=1, store=db) as runner:
            with trio.fail_after(30):
                assert [await runner.result(t) for t in waiting] == [0, 2, 4]


@pytest.mark.slow
async def test_file_stops_growing_in_a_100k_task_soak(tmp_path: Path) -> None:
    """With retention, a long run reuses the pages it frees: the file's size levels off."""
    db = tmp_path / "tasks.db"
    sizes = []
    async with TaskManager(max_workers=2, store=db, max_finished=1000) as tm:
        for _ in range(10):
            # 10,000 tasks a round, submitted 1,000 at a time: reading results one by one, a reader
            # falls behind the workers, and a result more than max_finished tasks old is forgotten.
            for chunk in range(0, 10_000, 1000):
                ids = [tm.submit(jobs_store.double, i) for i in range(chunk, chunk + 1000)]
                with trio.fail_after(300):
                    for t in ids:
                        await tm.result(t)
            await tm.flush()
            sizes.append(logical_size(db))
    assert max(sizes[2:]) <= sizes[1] * 1.25 + (1 << 20), sizes
