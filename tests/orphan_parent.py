"""A parent process for the orphan test: it starts workers busy in
``time.sleep(120)``, prints their pids as one JSON line, then waits to be
SIGKILLed by the test."""

from __future__ import annotations

import json
import sys

import trio

from genro_tasks import TaskManager, TaskStatus, testing


async def main() -> None:
    sys.path.insert(0, sys.argv[1])
    from jobs import slow_task, spawn_child_and_sleep

    tm = TaskManager(max_workers=3)
    await tm.startup()
    busy = [tm.submit(slow_task, 120), tm.submit(slow_task, 120), tm.submit(spawn_child_and_sleep)]
    await testing.wait_until(
        tm,
        lambda: (
            all(testing.status(tm, b) is TaskStatus.RUNNING for b in busy)
            and bool(testing.snapshot(tm, busy[2]).progress_message)
        ),
    )
    grandchild = int((testing.snapshot(tm, busy[2]).progress_message or "=0").split("=")[1])
    forkserver_pid = testing.forkserver_pid()
    workers = sorted(testing.worker_pids(tm))
    print(
        json.dumps({"workers": workers, "grandchild": grandchild, "forkserver": forkserver_pid}),
        flush=True,
    )
    await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main)
