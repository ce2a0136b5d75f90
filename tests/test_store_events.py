"""The event stream of one task, asked of a server process that has not read that task yet."""

from __future__ import annotations

from pathlib import Path

import trio

import jobs_store
from genro_tasks import SQLiteStore, TaskManager
from test_asgi import api_app, running, sse_events


async def test_a_task_another_process_just_submitted_streams_its_events(tmp_path: Path) -> None:
    """The stream reads the store first, as every other lookup does, instead of answering 404."""
    db = tmp_path / "tasks.db"
    async with TaskManager(max_workers=2, store=db) as runner:
        # This server process reads the others' changes only every 2 s: the task is new to it.
        viewer = TaskManager(max_workers=0, store=SQLiteStore(db, poll_interval=2.0))
        async with running(api_app(viewer)) as url:
            task_id = runner.submit(jobs_store.short, 0.2)
            await runner.flush()  # durable: any process may be asked about it now
            with trio.fail_after(30):
                events = await sse_events(url, f"/api/tasks/{task_id}/events", lambda e: False)
            assert events[-1]["status"] == "completed"
            assert events[-1]["task_id"] == task_id
