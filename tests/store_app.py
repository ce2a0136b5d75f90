"""A process that opens a TaskManager on a store (run by the store tests as a real process).

``python tests/store_app.py serve PATH WORKERS``: run the store's tasks with
WORKERS workers; print ``ready`` (and the pid) once started; shut down
cleanly when stdin closes.

``python tests/store_app.py load PATH``: submit short tasks forever with two
workers; after every flush print ``durable ID...`` for the tasks submitted
before it (the crash test kills it at random moments).
"""

from __future__ import annotations

import os
import sys

import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jobs_store
from genro_tasks import TaskManager


async def serve(path: str, workers: int) -> None:
    async with TaskManager(max_workers=workers, store=path) as tm:
        print(f"ready {os.getpid()}", flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        while await stdin.receive_some():
            pass
        await tm.shutdown(wait=False)


async def load(path: str) -> None:
    # Keep every finished task: the crash test checks that none acknowledged is missing.
    async with TaskManager(max_workers=2, store=path, max_finished=10_000_000) as tm:
        n = 0
        while True:
            ids = []
            for _ in range(20):
                n += 1
                if n % 3 == 0:
                    ids.append(tm.submit(jobs_store.short, 0.002))
                else:
                    ids.append(tm.submit(jobs_store.double, n))
            await tm.flush()
            print("durable " + " ".join(ids), flush=True)
            await trio.sleep(0.01)


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "serve":
        trio.run(serve, path, int(sys.argv[3]))
    else:
        trio.run(load, path)


if __name__ == "__main__":
    main()
