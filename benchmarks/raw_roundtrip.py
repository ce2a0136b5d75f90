"""The floor for a sequential round trip on this machine: a trio parent and a
forkserver child echoing 20 bytes over a pair of pipes, no framework at all.

    python benchmarks/raw_roundtrip.py
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from multiprocessing.connection import Connection

import trio


def _echo(rc: Connection, wc: Connection) -> None:
    r, w = os.dup(rc.fileno()), os.dup(wc.fileno())
    while data := os.read(r, 64):
        os.write(w, data)


async def measure(calls: int = 2000, skip: int | None = None) -> float:
    """Return the median round trip in microseconds, leaving out the first ``skip`` calls (default: 10%).

    Cancellation:
        Cancellable between calls; the child then exits when its pipe closes with the process.
    """
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    ctx = multiprocessing.get_context("forkserver")
    ends = (Connection(to_child_r, writable=False), Connection(from_child_w, readable=False))
    child = ctx.Process(target=_echo, args=ends)
    child.start()
    for end in ends:  # the child has its own copies now
        end.close()
    os.set_blocking(from_child_r, False)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        os.write(to_child_w, b"x" * 20)
        while True:
            try:
                os.read(from_child_r, 64)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(from_child_r)
        times.append(time.perf_counter() - t0)
    os.close(to_child_w)
    os.close(from_child_r)
    child.join()
    return statistics.median(times[calls // 10 if skip is None else skip :]) * 1e6


if __name__ == "__main__":
    results = [trio.run(measure) for _ in range(3)]
    print("raw pipe round trip, median of each run (µs):", ", ".join(f"{r:.0f}" for r in results))
