"""A parent process for the orphan test: it starts workers busy in
``time.sleep(120)``, prints their pids as one JSON line, then waits to be
SIGKILLed by the test."""

from __future__ import annotations

import json
import multiprocessing.forkserver
import sys

import trio

from genro_tasks import TaskManager, TaskStatus


async def main() -> None:
    sys.path.insert(0, sys.argv[1])
    from jobs import slow_task, spawn_child_and_sleep

    tm = TaskManager(max_workers=3)
    await tm.startup()
    busy = [tm.submit(slow_task, 120), tm.submit(slow_task, 120), tm.submit(spawn_child_and_sleep)]
    while not all(r.status is TaskStatus.RUNNING for r in (tm._records[b] for b in busy)) or not (
        tm._records[busy[2]].progress_message
    ):
        await tm._wait_change()
    sup = tm._sup
    assert sup is not None
    grandchild = int((tm._records[busy[2]].progress_message or "=0").split("=")[1])
    forkserver_pid = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    print(
        json.dumps({"workers": [w.pid for w in sup.workers], "grandchild": grandchild, "forkserver": forkserver_pid}),
        flush=True,
    )
    await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main)
