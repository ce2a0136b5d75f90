"""TaskManagerLifespan's SIGTERM watch, in a process of its own (the signal ends that process)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import trio

from genro_tasks import TaskManager, TaskStatus

TESTS = Path(__file__).parent

#: A server process: a lifespan whose drain has no time limit; a job that never ends is RUNNING when
#: SIGTERM arrives; once the drain has begun, the server gives up on the lifespan (hypercorn does when
#: its own shutdown_timeout runs out) and cancels it.
_SERVER = """
import os, signal, sys
import trio
sys.path.insert(0, {tests!r})
from genro_tasks import TaskManager, TaskStatus, testing
from genro_tasks.asgi import TaskManagerLifespan
from jobs_pipeline import wait_for_file

async def app(scope, receive, send):
    pass  # no lifespan of its own: TaskManagerLifespan answers the events

async def main():
    tm = TaskManager(1, store={db!r})
    lifespan = TaskManagerLifespan(app, tm, shutdown_timeout=None)
    to_lifespan, events = trio.open_memory_channel(1)
    sent = []
    async def send(message):
        sent.append(message["type"])
    await to_lifespan.send({{"type": "lifespan.startup"}})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lifespan, {{"type": "lifespan", "asgi": {{"version": "3.0"}}}}, events.receive, send)
        while "lifespan.startup.complete" not in sent:
            await trio.sleep(0.01)
        task_id = tm.submit(wait_for_file, {never!r}, 3600, task_id="forever")
        await testing.wait_for_status(tm, task_id, TaskStatus.RUNNING)
        os.kill(os.getpid(), signal.SIGTERM)
        while tm.is_running:  # the SIGTERM's drain has begun
            await trio.sleep(0.01)
        print("draining", flush=True)
        nursery.cancel_scope.cancel()
    print("the lifespan returned without the SIGTERM ending the process", flush=True)

trio.run(main)
"""


async def test_cancelling_a_lifespan_during_its_sigterm_drain_kills_the_tasks_and_ends_the_process(
    tmp_path: Path,
) -> None:
    """The drain a SIGTERM started is cancellable like the lifespan's own (see ``__call__``): the
    running task is killed and recorded CANCELLED, then the SIGTERM ends the process. The drain used to
    be shielded: with ``shutdown_timeout=None`` the process waited for the task for ever."""
    db = tmp_path / "tasks.db"
    script = _SERVER.format(tests=str(TESTS), db=str(db), never=str(tmp_path / "never"))
    proc = await trio.lowlevel.open_process([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        with trio.fail_after(30):
            status = await proc.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    assert proc.stdout is not None
    said = (await proc.stdout.receive_some()).decode()
    assert said == "draining\n"
    assert status == -signal.SIGTERM
    async with TaskManager(max_workers=0, store=db) as reader:
        info = await reader.info("forever")
    assert info.status is TaskStatus.CANCELLED
