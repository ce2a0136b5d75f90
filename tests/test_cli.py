"""``python -m genro_tasks ls | show | watch | cancel --store PATH`` on real stores, as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trio

import jobs
import jobs_store
from genro_tasks import TaskManager, TaskStatus, testing
from test_store import server


async def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the command line as the shell would; never raises on a non-zero exit."""
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "genro_tasks", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, **(env or {})},
        )


async def finished_store(db: Path) -> dict[str, str]:
    """A store left behind by a stopped application: one task per terminal status, one queued."""
    async with TaskManager(max_workers=1, store=db) as tm:
        ok = tm.submit(jobs.add, 2, 3, task_id="ok-1", metadata={"user": 7, "kind": "sum"})
        bad = tm.submit(jobs.failing_task, task_id="bad-1")
        await testing.wait_for_status(tm, bad, TaskStatus.FAILED)
        await tm.result(ok)
        gone = tm.submit(jobs.announce_and_sleep, task_id="gone-1")
        await testing.wait_for_status(tm, gone, TaskStatus.RUNNING)
        assert await tm.cancel(gone)
        await tm.flush()
    return {"ok": ok, "bad": bad, "gone": gone}


async def test_ls_and_show_read_a_stopped_application_store(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    ids = await finished_store(db)

    listed = await cli("ls", "--store", str(db))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["ID", "STATUS", "PROGRESS"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows.keys() == {ids["ok"], ids["bad"], ids["gone"]}
    assert " completed " in rows[ids["ok"]]
    assert "jobs.add" in rows[ids["ok"]]
    assert " failed " in rows[ids["bad"]]
    assert "ValueError" in rows[ids["bad"]]
    assert " cancelled " in rows[ids["gone"]]

    as_json = json.loads((await cli("ls", "--json", "--store", str(db))).stdout)
    assert {t["task_id"]: t["status"] for t in as_json} == {
        ids["ok"]: "completed",
        ids["bad"]: "failed",
        ids["gone"]: "cancelled",
    }
    only_failed = json.loads((await cli("ls", "--json", "--status", "failed", "--store", str(db))).stdout)
    assert [t["task_id"] for t in only_failed] == [ids["bad"]]
    newest = json.loads((await cli("ls", "--json", "--limit", "1", "--store", str(db))).stdout)
    assert [t["task_id"] for t in newest] == [ids["gone"]]

    shown = await cli("show", ids["ok"], "--store", str(db))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.decode()
    assert "status:           completed" in text
    assert '"user": 7' in text
    assert "worker_pid:" in text
    failed = json.loads((await cli("show", ids["bad"], "--json", "--store", str(db))).stdout)
    assert failed["status"] == "failed"
    assert "failing_task" in failed["traceback"]


async def test_cancel_and_watch_act_on_a_running_application(tmp_path: Path) -> None:
    """The task runs in another process; the CLI (a third process) watches it and cancels it."""
    db = tmp_path / "tasks.db"
    async with server(db, workers=1), TaskManager(max_workers=0, store=db) as tm:
        task_id = tm.submit(jobs_store.announce_and_sleep, 3600)
        with trio.fail_after(30):
            await testing.wait_for_status(tm, task_id, TaskStatus.RUNNING)
        watcher = await trio.lowlevel.open_process(
            [sys.executable, "-m", "genro_tasks", "watch", task_id, "--json", "--store", str(db)],
            stdout=subprocess.PIPE,
        )
        assert watcher.stdout is not None
        with trio.fail_after(30):
            first = await watcher.stdout.receive_some()
        assert json.loads(first.decode().splitlines()[0])["status"] == "running"

        cancelled = await cli("cancel", task_id, "--store", str(db))
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.decode().strip() == f"{task_id}: cancelled"
        assert (await tm.info(task_id)).status is TaskStatus.CANCELLED

        rest = b""
        with trio.fail_after(30):
            while chunk := await watcher.stdout.receive_some():
                rest += chunk
            assert await watcher.wait() == 1  # the watched task did not complete
        last = json.loads((first + rest).decode().splitlines()[-1])
        assert last["status"] == "cancelled"

        again = await cli("cancel", task_id, "--json", "--store", str(db))
        assert again.returncode == 1
        assert json.loads(again.stdout)["cancelled"] is False


async def test_groups_are_listed_and_filter_the_listing(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=2, store=db) as tm:
        ids = [tm.options(group="nightly").submit(jobs.add, i, i) for i in range(4)]
        other = tm.submit(jobs.add, 9, 9)
        await tm.gather([*ids, other])
        await tm.flush()
    listed = await cli("groups", "--store", str(db))
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.decode().splitlines()
    assert header.split()[:3] == ["GROUP", "TOTAL", "PENDING"]
    assert row.split()[:7] == ["nightly", "4", "0", "0", "4", "0", "0"]
    as_json = json.loads((await cli("groups", "--json", "--store", str(db))).stdout)
    assert [(g["group"], g["completed"], g["progress"]) for g in as_json] == [("nightly", 4, 1.0)]
    members = json.loads((await cli("ls", "--json", "--group", "nightly", "--store", str(db))).stdout)
    assert sorted(t["task_id"] for t in members) == sorted(ids)


async def test_cancel_a_queued_task_of_a_stopped_application(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=0, store=db) as tm:
        task_id = tm.submit(jobs.add, 1, 1)
        await tm.flush()
    done = await cli("cancel", task_id, "--store", str(db))
    assert done.returncode == 0, done.stderr
    async with TaskManager(max_workers=0, store=db) as tm:
        assert (await tm.info(task_id)).status is TaskStatus.CANCELLED


async def test_bad_usage_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    await finished_store(db)
    env = {"GENRO_TASKS_STORE": ""}
    no_store = await cli("ls", env=env)
    assert no_store.returncode == 2
    assert b"--store PATH" in no_store.stderr
    missing = await cli("ls", "--store", str(tmp_path / "nope.db"))
    assert missing.returncode == 2
    assert b"no task store at" in missing.stderr
    assert not (tmp_path / "nope.db").exists()  # reading never creates a store
    unknown = await cli("show", "no-such-task", "--store", str(db))
    assert unknown.returncode == 2
    assert b"no task 'no-such-task'" in unknown.stderr
    by_env = await cli("ls", "--json", env={"GENRO_TASKS_STORE": str(db)})
    assert by_env.returncode == 0
    assert len(json.loads(by_env.stdout)) == 3
    bad_grace = await cli("cancel", "x", "--grace", "nan", "--store", str(db))
    assert bad_grace.returncode == 2
    assert b"--grace" in bad_grace.stderr
    not_a_store = tmp_path / "notes.txt"
    not_a_store.write_text("hello")
    garbage = await cli("ls", "--store", str(not_a_store))
    assert garbage.returncode == 2
    assert b"not an SQLite file" in garbage.stderr
    assert b"Traceback" not in garbage.stderr
    empty = tmp_path / "empty.db"
    empty.touch()
    refused = await cli("ls", "--store", str(empty))
    assert refused.returncode == 2
    assert b"empty file" in refused.stderr
    assert empty.stat().st_size == 0  # left as it was


async def test_ls_aligns_ids_by_the_columns_they_take_on_a_terminal(tmp_path: Path) -> None:
    """A wide character takes two columns, a combining accent none: the next column still lines up."""
    db = tmp_path / "tasks.db"
    ids = ["報告書-1", "report-22", "e\u0301te\u0301"]  # 8, 9 and 3 columns
    async with TaskManager(max_workers=1, store=db) as tm:
        await tm.gather([tm.submit(jobs.add, 1, 1, task_id=tid) for tid in ids])
        await tm.flush()
    listed = await cli("ls", "--store", str(db))
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.decode().splitlines()[1:]}
    assert rows["報告書-1"].startswith("報告書-1   completed ")
    assert rows["report-22"].startswith("report-22  completed ")
    assert rows["e\u0301te\u0301"].startswith("e\u0301te\u0301        completed ")
