"""An application whose disk fills up under it (run by tests/test_store_disk.py as a real process).

The disk is made full without privileges: this process lowers its own file
size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored), so the store's files
cannot grow; raising the limit again is the room coming back. Its workers
started before, and keep the usual limit. Prints one JSON line per step.

``python tests/store_disk_app.py full PATH GATE``: tasks finish, are submitted and refused
while the disk is full; then room comes back and the manager works again.

``python tests/store_disk_app.py big PATH``: a 64 MiB result that cannot fit; the rest still fits.

``python tests/store_disk_app.py stop PATH``: the application stops while the disk is still full.

``python tests/store_disk_app.py open PATH``: a store opened on a disk already full.

``python tests/store_disk_app.py submit PATH``: submit one task with room (a process beside ``full``).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys

import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jobs_store_disk as jobs
from genro_tasks import TaskManager, TaskStatus, testing


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def unlimit_file_size() -> None:
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))


async def flush_error(tm: TaskManager) -> str:
    """Wait for ``flush()`` to fail (the writer saw the disk refuse a round), and return its error."""
    while True:
        try:
            await tm.flush()
        except OSError as exc:
            return str(exc)
        await trio.sleep(0.02)


async def full(path: str, gate: str) -> None:
    async with TaskManager(max_workers=1, store=path) as tm:
        acked = [tm.submit(jobs.length, b"x" * i) for i in range(5)]
        assert await tm.gather(acked) == list(range(5))
        running = tm.submit(jobs.wait_for_file, gate, 7)
        with trio.fail_after(10):
            await testing.wait_for_status(tm, running, TaskStatus.RUNNING)
        await tm.flush()
        limit = max(os.path.getsize(path), os.path.getsize(path + "-wal"))
        limit_file_size(limit)
        # Accepted: this process does not know yet that it cannot be written.
        accepted = tm.submit(jobs.length, b"y" * (4 * limit))
        with trio.fail_after(10):
            flushed = await flush_error(tm)
        try:
            tm.submit(jobs.length, b"z")
            refused = ""
        except OSError as exc:
            refused = str(exc)
        # Another process (with room: it raises the limit it inherits) submits: this one still sees it.
        child = await trio.run_process([sys.executable, __file__, "submit", path], capture_stdout=True)
        elsewhere = child.stdout.decode().strip()
        with trio.fail_after(10):
            seen = (await tm.info(elsewhere)).status.value
        with open(gate, "w"):
            pass
        with trio.fail_after(10):
            value = await tm.result(running)  # it ended while the disk was full: this process knows its end
        say(step="full", flushed=flushed, refused=refused, value=value, seen=seen)
        unlimit_file_size()
        with trio.fail_after(10):
            while True:
                try:
                    await tm.flush()
                    break
                except OSError:
                    await trio.sleep(0.05)
        after = tm.submit(jobs.length, b"a" * 3)
        with trio.fail_after(20):
            results = [await tm.result(accepted), await tm.result(after), await tm.result(elsewhere)]
        await tm.flush()
        say(step="room", limit=limit, acked=acked, running=running, accepted=accepted, after=after, results=results)


async def big(path: str) -> None:
    async with TaskManager(max_workers=1, store=path) as tm:
        await tm.flush()
        limit_file_size(16 << 20)  # room for everything but the 64 MiB result
        huge = tm.submit(jobs.big, 64 << 20)
        with trio.fail_after(30):
            here = len(await tm.result(huge))  # this process holds it
        small = tm.submit(jobs.length, b"s" * 5)
        with trio.fail_after(20):
            value = await tm.result(small)
            await tm.flush()
        say(huge=huge, here=here, small=small, value=value)


async def stop(path: str) -> None:
    async with TaskManager(max_workers=1, store=path) as tm:
        acked = [tm.submit(jobs.length, b"x" * i) for i in range(3)]
        assert await tm.gather(acked) == list(range(3))
        await tm.flush()
        limit = max(os.path.getsize(path), os.path.getsize(path + "-wal"))
        limit_file_size(limit)
        lost = tm.submit(jobs.length, b"y" * (4 * limit))
        with trio.fail_after(10):
            await flush_error(tm)
        say(acked=acked, lost=lost)
    say(stopped=True)


async def open_full(path: str) -> None:
    limit_file_size(0)
    try:
        async with TaskManager(max_workers=1, store=path):
            say(error="")
    except RuntimeError as exc:
        say(error=str(exc))


async def submit(path: str) -> None:
    unlimit_file_size()
    async with TaskManager(max_workers=0, store=path) as tm:
        tid = tm.submit(jobs.length, b"abc")
        await tm.flush()
    print(tid, flush=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)  # what an operator sees
    if sys.argv[1] == "full":
        trio.run(full, sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "stop":
        trio.run(stop, sys.argv[2])
    elif sys.argv[1] == "submit":
        trio.run(submit, sys.argv[2])
    elif sys.argv[1] == "open":
        trio.run(open_full, sys.argv[2])
    else:
        trio.run(big, sys.argv[2])


if __name__ == "__main__":
    main()
