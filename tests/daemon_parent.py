"""Runs a TaskManager inside a daemonic multiprocessing process, as a hypercorn worker does,
and prints what a job returned."""

from __future__ import annotations

import multiprocessing
import sys
from multiprocessing.connection import Connection

import trio

from genro_tasks import TaskManager


def serve(conn: Connection) -> None:
    async def main() -> None:
        async with TaskManager(1) as tm:
            conn.send(await tm.run(pow, 2, 10))

    trio.run(main)


if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    daemon = ctx.Process(target=serve, args=(writer,), daemon=True)
    daemon.start()
    writer.close()
    print(reader.recv(), flush=True)
    daemon.join(60)
    sys.exit(daemon.exitcode)
