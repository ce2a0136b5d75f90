"""``cancel`` of a task a stopped process runs: what it says while it waits goes where it was told."""

from __future__ import annotations

import io
import signal
from pathlib import Path

import trio

import jobs_store
from genro_tasks import TaskManager, TaskStatus, testing
from genro_tasks._cli import run_command
from genro_tasks._demo import build_parser
from test_store import server


async def test_cancel_says_what_it_waits_for_on_the_error_stream_it_was_given(tmp_path: Path) -> None:
    """``run_command(args, out, err)`` writes everything it has to say on ``out`` and ``err``: the
    explanation of a long wait went to ``sys.stderr`` whatever ``err`` was."""
    db = tmp_path / "tasks.db"
    async with server(db, workers=1) as owner, TaskManager(max_workers=0, store=db) as client:
        task_id = client.submit(jobs_store.announce_and_sleep, 3600)
        with trio.fail_after(30):
            await testing.wait_for_status(client, task_id, TaskStatus.RUNNING)
        args = build_parser().parse_args(["cancel", task_id, "--store", str(db)])
        out, err = io.StringIO(), io.StringIO()
        codes: list[int] = []

        async def cancel() -> None:
            codes.append(await trio.to_thread.run_sync(run_command, args, out, err))

        owner.proc.send_signal(signal.SIGSTOP)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel)
            try:
                with trio.fail_after(30):
                    while "\n" not in err.getvalue():  # noqa: ASYNC110 - another thread writes it
                        await trio.sleep(0.01)
                said = err.getvalue()
            finally:
                owner.proc.send_signal(signal.SIGCONT)  # the cancel completes once the owner resumes
        assert f"pid {owner.pid}" in said
        assert "stopped" in said
        assert codes == [0]
        assert out.getvalue() == f"{task_id}: cancelled\n"
        with trio.fail_after(10):  # this client reads the change at its next look at the store
            await testing.wait_for_status(client, task_id, TaskStatus.CANCELLED)
