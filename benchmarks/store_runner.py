"""The other process of the cross-process cancel benchmark: ``store_runner.py PATH WORKERS``.

Runs the store's tasks with WORKERS workers, prints ``ready`` once started, and shuts
down when its stdin closes.
"""

from __future__ import annotations

import os
import sys

import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_jobs, for the workers

from genro_tasks import TaskManager


async def serve(path: str, workers: int) -> None:
    async with TaskManager(max_workers=workers, store=path) as tm:
        print("ready", flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        while await stdin.receive_some():
            pass
        await tm.shutdown(wait=False)


if __name__ == "__main__":
    trio.run(serve, sys.argv[1], int(sys.argv[2]))
