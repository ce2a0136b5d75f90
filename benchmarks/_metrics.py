"""The metrics every library runs, written once against the Pool interface.

Each takes a pool opener (``open_xxx(workers)``) and the parameters, opens a
fresh pool, and returns its numbers. Pool start-up is never part of a
measurement except in :func:`startup`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import trio

import bench_jobs
from _common import Numbers, Params, Pool, PoolOpener, now, open_pidfd, read_pid, wait_for_file, wait_gone

#: How long the "long" jobs of the cancel scenario sleep.
LONG_JOB_S = 60.0
#: Status truth: 6 jobs of 2 s on the workers, looked at after 0.5 s.
SLOW_JOBS, SLOW_JOB_S, LOOK_AFTER_S = 6, 2.0, 0.5


async def warm(pool: Pool, workers: int) -> None:
    """One trivial job per worker, concurrently, so lazily started workers exist.

    Cancellation:
        Cancellable; the pool's exit stops what runs.
    """
    await pool.run_batch(bench_jobs.double, [(i,) for i in range(workers)])


async def throughput(opener: PoolOpener, p: Params) -> Numbers:
    async with opener(p.workers) as pool:
        await warm(pool, p.workers)
        t0 = now()
        values = await pool.run_batch(bench_jobs.double, [(i,) for i in range(p.size)])
        elapsed = now() - t0
    if sum(values) != p.size * (p.size - 1):
        raise RuntimeError("wrong results")
    return {"tps": p.size / elapsed, "elapsed_s": elapsed}


async def roundtrip(opener: PoolOpener, p: Params) -> Numbers:
    async with opener(p.workers) as pool:
        await warm(pool, p.workers)
        for i in range(p.warmup):
            await pool.call(bench_jobs.double, i)
        times: list[float] = []
        for i in range(p.calls):
            t0 = now()
            value = await pool.call(bench_jobs.double, i)
            times.append(now() - t0)
            if value != 2 * i:
                raise RuntimeError("wrong result")
    return {"median_us": statistics.median(times) * 1e6, "mean_us": statistics.fmean(times) * 1e6}


async def cancel(opener: PoolOpener, p: Params) -> Numbers:
    """Both workers busy with a long job; cancel one, then run two trivial jobs."""
    other_marker, victim_marker = p.tmpdir / "other", p.tmpdir / "victim"
    async with opener(p.workers) as pool:
        if not pool.can_cancel:
            raise RuntimeError("this library cannot cancel a running job")
        await warm(pool, p.workers)
        other = pool.start(bench_jobs.sleep_marked, str(other_marker), LONG_JOB_S)
        victim = pool.start(bench_jobs.sleep_marked, str(victim_marker), LONG_JOB_S)
        for job, marker in ((other, other_marker), (victim, victim_marker)):
            await pool.wait_running(job, marker)
            await wait_for_file(marker)  # and the job really is inside its sleep, for every library alike
        pidfd = open_pidfd(read_pid(victim_marker))  # before the cancel: it names that very process
        gone_at: list[float] = []
        gone = trio.Event()

        async def watch_pid(fd: int) -> None:
            await wait_gone(fd)
            gone_at.append(now())
            gone.set()

        try:
            async with trio.open_nursery() as nursery:
                t0 = now()
                if pidfd is not None:
                    nursery.start_soon(watch_pid, pidfd)
                await victim.cancel()
                t1 = now()
                values = await pool.run_batch(bench_jobs.double, [(1,), (2,)])
                t2 = now()
                if pidfd is not None:
                    with trio.fail_after(30):
                        await gone.wait()
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if values != [2, 4]:
            raise RuntimeError("wrong results")
    out = {"cancel_ms": (t1 - t0) * 1e3, "restore_ms": (t2 - t0) * 1e3}
    if gone_at:  # observed through a pidfd: woken by the exit itself, not by a poll
        out["worker_gone_ms"] = (gone_at[0] - t0) * 1e3
    return out


async def startup(opener: PoolOpener, p: Params) -> Numbers:
    """From constructing the pool until one trivial job per worker (concurrently) has completed."""
    t0 = now()
    async with opener(p.workers) as pool:
        t_open = now()
        await warm(pool, p.workers)
        t1 = now()
    return {"ready_ms": (t1 - t0) * 1e3, "open_ms": (t_open - t0) * 1e3}


async def echo(opener: PoolOpener, p: Params) -> Numbers:
    data = bytes(p.size)
    async with opener(p.workers) as pool:
        await warm(pool, p.workers)
        t0 = now()
        out = await pool.call(bench_jobs.echo, data)
        elapsed = now() - t0
    if len(out) != p.size:
        raise RuntimeError("wrong result")
    return {"echo_s": elapsed}


async def status_truth(opener: PoolOpener, p: Params) -> Numbers:
    async with opener(p.workers) as pool:
        await warm(pool, p.workers)
        jobs = [pool.start(bench_jobs.sleep, SLOW_JOB_S) for _ in range(SLOW_JOBS)]
        await trio.sleep(LOOK_AFTER_S)
        states = [await job.reported_running() for job in jobs]
        if any(s is None for s in states):
            raise RuntimeError("this library exposes no job state")
        running = sum(bool(s) for s in states)
        # The pool's exit stops the slow jobs (genro_tasks and pebble kill them, ppe's workers are killed).
    return {"running_reported": float(running), "truly_running": float(min(p.workers, SLOW_JOBS))}


_RAW_CHILD = """
import sys
n = int(sys.argv[1])
sys.stdout.buffer.write(b"R"); sys.stdout.buffer.flush()
data = sys.stdin.buffer.read(n)
sys.stdout.buffer.write(data); sys.stdout.buffer.flush()
"""


def raw_pipe_echo(p: Params) -> Numbers:
    """The floor: a child reads p.size bytes from a pipe and writes them back."""
    data = bytes(p.size)
    with subprocess.Popen(
        [sys.executable, "-c", _RAW_CHILD, str(p.size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        if proc.stdout.read(1) != b"R":
            raise RuntimeError("raw child did not start")
        t0 = now()
        proc.stdin.write(data)
        proc.stdin.flush()
        out = proc.stdout.read(p.size)
        elapsed = now() - t0
        proc.stdin.close()
    if len(out) != p.size:
        raise RuntimeError("short read")
    return {"echo_s": elapsed}
