"""What an operator does to a store from outside the application, and what it must not break.

Real SQLite files, real worker processes, and the command line run as the shell would.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

import jobs
import jobs_store
from browser_helpers import free_port
from genro_tasks import TaskManager, TaskStatus, testing
from test_asgi import ROOT
from test_cli import cli
from test_store import server


def _tables(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))


def _journal_mode(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


def _foreign_database(path: Path) -> Path:
    """An SQLite database another program owns (its own tables, rollback journal)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
        conn.commit()
    return path


async def test_another_programs_sqlite_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """A store path that names someone else's database (a typo, a shared data folder) is not written to."""
    db = _foreign_database(tmp_path / "app.db")
    before = (_tables(db), _journal_mode(db))

    tm = TaskManager(max_workers=1, store=db)
    with pytest.raises(RuntimeError, match=r"not a task store.*invoices.*name a new file"):
        with trio.fail_after(30):
            await tm.startup()
    listed = await cli("ls", "--store", str(db))
    assert listed.returncode == 2
    assert b"not a task store" in listed.stderr
    assert b"Traceback" not in listed.stderr

    assert (_tables(db), _journal_mode(db)) == before  # no table added, still in its own journal mode


async def test_reading_a_store_from_the_shell_deletes_no_finished_task(tmp_path: Path) -> None:
    """The application keeps 50,000 finished tasks; ``ls`` (a client with default limits) must not prune to 10,000."""
    db = tmp_path / "tasks.db"
    count = 10_050  # above the default max_finished (10,000)
    async with TaskManager(max_workers=2, store=db, max_finished=50_000) as tm:
        with trio.fail_after(60):
            ids = [tm.submit(jobs.add, i, 1) for i in range(count)]
            await tm.gather(ids)
            await tm.flush()

    listed = await cli("ls", "--json", "--store", str(db))
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == count
    shown = await cli("show", ids[0], "--store", str(db))  # the oldest, first to go if anything is pruned
    assert shown.returncode == 0, shown.stderr
    async with TaskManager(max_workers=0, store=db, max_finished=50_000) as tm:
        assert len(tm.list_tasks()) == count
        assert await tm.result(ids[0]) == 1


async def test_terminal_output_shows_control_characters_escaped(tmp_path: Path) -> None:
    """Task text comes from users and jobs: an escape sequence in it must not drive the
    operator's terminal, and a newline must not split a row of ``ls``."""
    db = tmp_path / "tasks.db"
    odd_id = "red\x1b[31m\nline\u202etwo"
    async with TaskManager(max_workers=1, store=db) as tm:
        with trio.fail_after(30):
            tm.submit(jobs.add, 1, 2, task_id=odd_id, metadata={"note": "csi\x9b2J"})
            tm.submit(jobs_store.fail, "boom\x1b[2J\x07", task_id="bad")
            await tm.gather([odd_id, "bad"], return_exceptions=True)
            await tm.flush()

    outputs = [
        await cli("ls", "--store", str(db)),
        await cli("show", odd_id, "--store", str(db)),
        await cli("show", "bad", "--store", str(db)),
        await cli("watch", odd_id, "--store", str(db)),
        await cli("watch", "bad", "--store", str(db)),
    ]
    for done in outputs:
        assert done.returncode in (0, 1), done.stderr
        text = done.stdout.decode()
        assert not {"\x1b", "\x07", "\x9b", "\u202e"} & set(text), text
    listed = outputs[0].stdout.decode().splitlines()
    assert len(listed) == 3  # the header and one line per task
    assert any(line.startswith(r"red\x1b[31m\nline\u202etwo ") for line in listed)
    assert r"boom\x1b[2J\x07" in outputs[2].stdout.decode()
    # JSON keeps the exact text, escaped by JSON itself.
    shown = json.loads((await cli("show", odd_id, "--json", "--store", str(db))).stdout)
    assert (shown["task_id"], shown["metadata"]) == (odd_id, {"note": "csi\x9b2J"})


async def test_a_task_claimed_behind_a_long_job_goes_to_an_idle_process(tmp_path: Path) -> None:
    """A restart with a backlog: the first process up claims tasks ahead of its workers, which
    then turn out busy with long jobs; a second process's idle workers must run those tasks
    instead of leaving them to wait for the first process's jobs to end."""
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=0, store=db) as client:
        ids = [client.submit(jobs_store.short, 8) for _ in range(4)]
        await client.flush()

        def running() -> int:
            return sum(testing.status(client, i) is TaskStatus.RUNNING for i in ids)

        def settled(n: int) -> Callable[[], bool]:
            return lambda: running() >= n or any(testing.status(client, i).is_terminal for i in ids)

        async with server(db, workers=2):
            with trio.fail_after(30):
                await testing.wait_until(client, settled(2))
            async with server(db, workers=2):
                with trio.fail_after(30):
                    await testing.wait_until(client, settled(4))
                assert [testing.status(client, i) for i in ids] == [TaskStatus.RUNNING] * 4
                for i in ids:
                    assert await client.cancel(i)


async def test_cancel_from_the_shell_says_what_it_waits_for(tmp_path: Path) -> None:
    """The process running the task is stopped (SIGSTOP, a debugger): ``cancel`` must say why it
    waits instead of hanging silently, and finish once that process resumes."""
    db = tmp_path / "tasks.db"
    async with server(db, workers=1) as owner, TaskManager(max_workers=0, store=db) as client:
        task_id = client.submit(jobs_store.announce_and_sleep, 3600)
        with trio.fail_after(30):
            await testing.wait_for_status(client, task_id, TaskStatus.RUNNING)
        owner.proc.send_signal(signal.SIGSTOP)
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "genro_tasks", "cancel", task_id, "--store", str(db)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert proc.stderr is not None
            assert proc.stdout is not None
            said = b""
            with trio.fail_after(30):
                while b"\n" not in said:
                    chunk = await proc.stderr.receive_some()
                    assert chunk, "cancel ended without saying it waits"
                    said += chunk
            assert f"pid {owner.pid}".encode() in said, said
            assert b"stopped" in said
            assert proc.returncode is None  # still waiting
        finally:
            owner.proc.send_signal(signal.SIGCONT)
        with trio.fail_after(30):
            out = await proc.stdout.receive_some()
            assert await proc.wait() == 0
        assert out.decode().strip() == f"{task_id}: cancelled"
        with trio.fail_after(10):  # this client reads the change at its next look at the store
            await testing.wait_for_status(client, task_id, TaskStatus.CANCELLED)


#: Run a command as user nobody (setpriv, from util-linux).
AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to run the command as another user"
)
async def test_a_store_this_user_cannot_write_says_so(tmp_path: Path) -> None:
    """An operator runs the command as a user who may read the store but not write it."""
    probe = await trio.run_process([*AS_NOBODY, sys.executable, "-c", "pass"], capture_stderr=True, check=False)
    if probe.returncode != 0:  # e.g. under tox, whose directory only root may enter
        pytest.skip(f"user nobody cannot run this interpreter ({sys.executable}): {probe.stderr.decode().strip()}")
    folder = Path(tempfile.mkdtemp(prefix="genro-ro-"))  # outside tmp_path, whose parents only root may enter
    try:
        folder.chmod(0o755)
        db = folder / "tasks.db"
        async with TaskManager(max_workers=0, store=db) as tm:
            tm.submit(jobs.add, 1, 1)
            await tm.flush()
        for path in folder.iterdir():
            path.chmod(0o644)
        with trio.fail_after(60):
            done = await trio.run_process(
                [*AS_NOBODY, sys.executable, "-m", "genro_tasks", "ls", "--store", str(db)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert done.returncode == 2
        said = done.stderr.decode()
        assert "Traceback" not in said
        assert "cannot write" in said
        assert "user" in said
    finally:
        shutil.rmtree(folder)


@asynccontextmanager
async def hypercorn_example(env: dict[str, str], workers: int) -> AsyncIterator[tuple[trio.Process, str]]:
    """``hypercorn --workers N examples.export_app:app`` on a free port: yield its main process and URL.

    Unlike ``test_asgi.example_server``, the test stops it itself (with the signal it chooses).
    """
    port = free_port()
    command = [sys.executable, "-m", "hypercorn", "--worker-class", "trio", "--workers", str(workers)]
    command += ["--bind", f"127.0.0.1:{port}", "examples.export_app:app"]
    proc = await trio.lowlevel.open_process(command, cwd=ROOT, env={**os.environ, **env}, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        log = b""
        with trio.fail_after(60):
            while log.count(b"Running on") < workers:
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, log.decode()
                log += chunk
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if proc.stderr is not None:
                await proc.stderr.aclose()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


@pytest.mark.parametrize("to_every_process", [False, True], ids=["main-process", "every-process"])
async def test_a_deploy_lets_every_server_process_finish_its_running_exports(
    tmp_path: Path, to_every_process: bool
) -> None:
    """SIGTERM to ``hypercorn --workers 2``. To the main process (a deploy, as the README says):
    hypercorn (0.18) asks both server processes to shut down, then SIGTERMs the one still
    draining as soon as the other has exited. To every process at once (systemd's default): a
    server process gets it before any shutdown began. Either way the running export must
    finish (within ``shutdown_timeout``), not end ``TaskLost``."""
    db = tmp_path / "tasks.db"
    env = {"EXPORT_REPORT_DIR": str(tmp_path / "reports"), "EXPORT_TASK_STORE": str(db)}
    async with (
        hypercorn_example(env, workers=2) as (proc, url),
        httpx.AsyncClient(base_url=url, timeout=30) as http,
        TaskManager(max_workers=0, store=db) as client,
    ):
        started = await http.post(
            "/exports", params={"user_id": 1, "seconds": 2}, headers={"X-Requested-With": "exports"}
        )
        task_id = started.json()["task_id"]
        with trio.fail_after(30):
            await testing.wait_for_status(client, task_id, TaskStatus.RUNNING)
        for pid in [proc.pid, *(_children(proc.pid) if to_every_process else [])]:
            os.kill(pid, signal.SIGTERM)
        with trio.fail_after(30):
            await proc.wait()
            await testing.wait_until(client, lambda: testing.status(client, task_id).is_terminal)
        info = await client.info(task_id)
        assert info.status is TaskStatus.COMPLETED, info.error


async def test_ls_on_a_terminal_fits_rows_with_a_very_long_id(tmp_path: Path) -> None:
    """One 300-character id must not push every other column off an 80-column terminal (nor a wide one)."""
    db = tmp_path / "tasks.db"
    long_id = "export-" + "x" * 293
    wide_id = "報告" * 60  # 240 columns
    async with TaskManager(max_workers=1, store=db) as tm:
        await tm.gather([tm.submit(jobs.add, n, 1, task_id=tid) for n, tid in enumerate((long_id, wide_id, "short"))])
        await tm.flush()
    primary, secondary = pty.openpty()
    try:
        with trio.fail_after(60):
            await trio.run_process(
                [sys.executable, "-m", "genro_tasks", "ls", "--store", str(db)],
                stdout=secondary,
                env={**os.environ, "COLUMNS": "80"},
            )
        os.close(secondary)
        secondary = -1
        text = b""
        with contextlib.suppress(OSError):  # EIO once everything written is read
            while chunk := os.read(primary, 4096):
                text += chunk
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    lines = text.decode().splitlines()
    assert len(lines) == 4, lines
    columns = [len(line) + line.count("報") + line.count("告") for line in lines]  # (each of those takes two)
    assert all(n <= 80 for n in columns), lines
    assert all(" completed " in line for line in lines[1:]), lines
    statuses = {line.index(" completed ") + line.count("報") + line.count("告") for line in lines[1:]}
    assert len(statuses) == 1, lines  # the status column lines up
