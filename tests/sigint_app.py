"""An application for the Ctrl-C test: a TaskManager under load inside
``async with``. It prints READY once work is flowing, and when a SIGINT
stops it, prints every task's final status as one JSON line and exits 130."""

from __future__ import annotations

import json
import sys

import trio

from genro_tasks import TaskManager, TaskStatus

managers: list[TaskManager] = []


async def main() -> None:
    sys.path.insert(0, sys.argv[1])
    from jobs import simple_task, slow_task

    async with TaskManager(max_workers=3) as tm:
        managers.append(tm)
        long_running = tm.submit(slow_task, 3600, task_id="long-running")
        async for info in tm.watch(long_running):
            if info.status is TaskStatus.RUNNING:
                break
        print("READY", flush=True)
        with trio.fail_after(60):
            while True:  # keep the supervisor busy with frames until Ctrl-C
                ids = [tm.submit(simple_task, n) for n in range(300)]
                for tid in ids:
                    await tm.result(tid)


if __name__ == "__main__":
    try:
        trio.run(main)
    except KeyboardInterrupt:
        tm = managers[0]
        report = {info.task_id: [info.status.value, info.error] for info in tm.list_tasks()}
        print(json.dumps({"running_after": tm.is_running, "tasks": report}), flush=True)
        sys.exit(130)
