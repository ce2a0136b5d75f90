"""The shared store on a hostile disk: full, past the file size limit, files deleted or replaced, tables dropped.

Real processes on real SQLite files. A full disk is simulated without
privileges by an application that lowers its own file size limit
(tests/store_disk_app.py); the rest happens to a manager in this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
import trio

import jobs_store
from genro_tasks import ManagerClosed, SQLiteStore, TaskLost, TaskManager, TaskStatus, testing

APP = str(Path(__file__).with_name("store_disk_app.py"))


async def run_app(*args: str, stderr: list[str] | None = None) -> list[dict[str, object]]:
    """Run the application to its end; its JSON lines (and its standard error, in ``stderr``)."""
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, APP, *args], capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    if stderr is not None:
        stderr.append(done.stderr.decode())
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


def integrity(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


async def test_a_full_disk_refuses_submissions_keeps_what_was_durable_and_recovers(tmp_path: Path) -> None:
    db, gate = tmp_path / "tasks.db", tmp_path / "gate"
    full, room = await run_app("full", str(db), str(gate))
    # flush() and submit() say what is wrong and what to do, naming the store.
    for text in (full["flushed"], full["refused"]):
        assert isinstance(text, str)
        assert str(db) in text
        assert "file size limit" in text
        assert "raise that limit" in text
    assert "was not submitted" in str(full["refused"])
    assert full["value"] == 7
    # Room came back: the task that ended meanwhile, the submission accepted before the refusal was known
    # and one submitted after all ran, and everything is in the file.
    assert full["seen"] == "pending"  # a task another process submitted meanwhile was seen here
    assert room["results"] == [4 * room["limit"], 3, 3]  # type: ignore[operator]
    async with TaskManager(max_workers=0, store=db) as tm:
        ids = [*room["acked"], room["running"], room["accepted"], room["after"]]  # type: ignore[misc]
        infos = [await tm.info(t) for t in ids]
        assert [i.status for i in infos] == [TaskStatus.COMPLETED] * len(ids)
        assert await tm.gather(room["acked"]) == list(range(5))  # type: ignore[arg-type]
        assert await tm.result(room["running"]) == 7  # type: ignore[arg-type]
        assert await tm.result(room["after"]) == 3  # type: ignore[arg-type]
    assert integrity(db) == "ok"


async def test_a_result_too_big_for_the_disk_fails_alone_and_says_why(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    (out,) = await run_app("big", str(db))
    assert out["here"] == 64 << 20  # the process that ran it holds the value
    assert out["value"] == 5  # and the store kept working for the rest
    async with TaskManager(max_workers=0, store=db) as tm:
        assert (await tm.info(out["huge"])).status is TaskStatus.COMPLETED  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match=r"value \(\d+ bytes\) could not be stored: .*file size limit"):
            await tm.result(out["huge"])  # type: ignore[arg-type]
        assert await tm.result(out["small"]) == 5  # type: ignore[arg-type]
    assert integrity(db) == "ok"


async def test_an_application_stopping_on_a_full_disk_stops_and_says_what_it_could_not_write(
    tmp_path: Path,
) -> None:
    db = tmp_path / "tasks.db"
    stderr: list[str] = []
    out, stopped = await run_app("stop", str(db), stderr=stderr)
    assert stopped == {"stopped": True}
    assert "stopping without writing" in stderr[0]
    assert "(1 submissions)" in stderr[0]
    async with TaskManager(max_workers=0, store=db) as tm:
        assert await tm.gather(out["acked"]) == list(range(3))  # type: ignore[arg-type]
        with pytest.raises(KeyError):
            await tm.info(out["lost"])  # type: ignore[arg-type]
        assert not [i for i in tm.list_tasks() if not i.status.is_terminal]
    assert integrity(db) == "ok"


async def test_a_store_opened_on_a_full_disk_says_so(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    (out,) = await run_app("open", str(db))
    assert str(db) in str(out["error"])
    assert "file size limit" in str(out["error"])
    assert "raise the limit" in str(out["error"])


def _delete_all(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        os.unlink(f"{db}{suffix}")


def _delete_wal_and_shm(db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        os.unlink(f"{db}{suffix}")


def _delete_directory(db: Path) -> None:
    shutil.rmtree(db.parent)  # rm -r var/


def _replace(db: Path) -> None:
    other = db.with_name("other.db")
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE t (x)")
    os.replace(other, db)  # mv other.db tasks.db


@pytest.mark.parametrize(
    ("attack", "said"),
    [
        (_delete_all, "the file deleted"),
        (_delete_wal_and_shm, "its -wal deleted"),
        (_replace, "the file replaced"),
        (_delete_directory, "the file deleted"),
    ],
    ids=["rm", "rm-wal-shm", "mv-over", "rm-r-directory"],
)
async def test_a_store_file_deleted_or_replaced_under_a_running_manager_stops_it_loudly(
    tmp_path: Path, attack: object, said: str
) -> None:
    (tmp_path / "var").mkdir()
    db = tmp_path / "var" / "tasks.db"
    async with TaskManager(max_workers=1, store=db) as tm, TaskManager(max_workers=0, store=db) as client:
        running = tm.submit(jobs_store.announce_and_sleep)
        queued = client.submit(jobs_store.double, 1)  # in the shared queue, behind the running task
        with trio.fail_after(20):
            await testing.wait_for_status(tm, running, TaskStatus.RUNNING)
        await client.flush()
        attack(db)  # type: ignore[operator]
        # Both managers notice at their next heartbeat (about a second), and say what happened.
        with trio.fail_after(10):
            with pytest.raises(Exception, match=f"changed under this process \\({said}") as lost:
                await tm.result(running)
            with pytest.raises(TaskLost, match="lost its task store"):
                await client.result(queued)
        assert "Restart every process" in str(lost.value.__cause__ or lost.value)
        with pytest.raises(ManagerClosed):
            tm.submit(jobs_store.double, 2)
        with pytest.raises(ManagerClosed):
            client.submit(jobs_store.double, 2)


async def test_a_writer_broken_by_another_program_fails_every_caller_instead_of_hanging(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=0, store=SQLiteStore(db)) as tm:
        queued = tm.submit(jobs_store.double, 1)  # nobody runs it: it waits in the shared queue
        await tm.flush()
        with contextlib.closing(sqlite3.connect(db)) as conn:  # another program drops a table it needs
            conn.execute("DROP TABLE processes")
        with trio.fail_after(10):
            with pytest.raises(TaskLost, match=r"lost its task store .*no such table: processes"):
                await tm.result(queued)
        with pytest.raises(ManagerClosed):
            tm.submit(jobs_store.double, 2)


async def test_a_manager_whose_writer_fails_ends_its_tasks_in_the_file_for_the_others(tmp_path: Path) -> None:
    """The failing process lives on, so nobody would recover its tasks: it ends them itself, as its death would."""
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=1, store=db) as owner:
        running = owner.submit(jobs_store.announce_and_sleep)
        with trio.fail_after(20):
            await testing.wait_for_status(owner, running, TaskStatus.RUNNING)
        queued = owner.submit(jobs_store.double, 5)  # claimed here, behind the running job
        await owner.flush()
        async with TaskManager(max_workers=1, store=db) as other:
            with contextlib.closing(sqlite3.connect(db)) as conn:  # another program refuses the owner's heartbeat
                (mine,) = conn.execute("SELECT owner FROM tasks WHERE id = ?", (running,)).fetchone()
                conn.execute(
                    "CREATE TRIGGER refuse BEFORE UPDATE OF heartbeat ON processes "
                    f"WHEN NEW.owner = '{mine}' BEGIN SELECT RAISE(ABORT, 'heartbeat refused'); END"
                )
            with trio.fail_after(10):
                with pytest.raises(Exception, match="heartbeat refused"):
                    await owner.result(running)
                await testing.wait_for_status(other, running, TaskStatus.FAILED)
                assert await other.result(queued) == 10
            # Here, the task it had claimed is not said to have failed with the manager: it went back
            # to the shared queue, and another process ran it.
            with pytest.raises(TaskLost, match=r"lost its task store .* may still run, or have run, in another"):
                await owner.result(queued)
            with pytest.raises(TaskLost, match=r"store writer of its TaskManager process .* failed"):
                await other.result(running)


@pytest.mark.parametrize(
    "change",
    ["status = 'paused'", "status = 'failed', error = x'41', completed = 1.0"],
    ids=["unknown-status", "blob-error"],
)
async def test_a_row_another_program_wrote_wrong_stops_the_manager_instead_of_crashing_trio(
    tmp_path: Path, change: str
) -> None:
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=0, store=db) as tm:
        tid = tm.submit(jobs_store.double, 1)
        await tm.flush()
        with contextlib.closing(sqlite3.connect(db)) as conn:
            (rev,) = conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'rev' RETURNING value").fetchone()
            conn.execute(f"UPDATE tasks SET {change}, rev = ? WHERE id = ?", (rev, tid))
            conn.commit()
        with trio.fail_after(10):
            with pytest.raises(Exception, match="cannot"):
                await tm.result(tid)
        with pytest.raises(ManagerClosed, match="another program or a newer genro_tasks"):
            tm.submit(jobs_store.double, 2)


async def test_a_store_holding_a_row_written_wrong_is_refused_at_startup_with_the_reason(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=0, store=db) as tm:
        tid = tm.submit(jobs_store.double, 1)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE tasks SET status = 'failed', error = x'41', completed = 1.0 WHERE id = ?", (tid,))
        conn.commit()
    later = TaskManager(max_workers=0, store=db)
    with pytest.raises(RuntimeError, match=r"cannot open the task store .*cannot apply .*another program"):
        await later.startup()
