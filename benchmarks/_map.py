"""``tm.map`` against submit-all-and-await and against the peers' own ``map`` (issue 17 item 5).

* genro_tasks: ``async for v in tm.map(double, range(n))`` at its defaults (automatic chunk
  size: the size it ended with is reported), ``tm.map(..., chunksize=1)`` (one task per
  item), and, in the same process on the same manager, the reference: every task
  submitted at once, then each result awaited in order. Each is run twice, interleaved
  (map, map chunksize=1, submit-all, submit-all, map chunksize=1, map), and the better of
  its two runs is kept. Then, in the same process once the manager is closed, the
  like-for-like reference of the chunked map: ``multiprocessing.Pool.imap`` at its best
  chunksize among 100, 1,000 and 10,000.
* ppe: ``ProcessPoolExecutor.map(double, range(n), chunksize=1)``, consumed in one helper thread.
* pebble: ``ProcessPool.map(double, range(n), chunksize=1).result()``, consumed the same way.
* mp_pool: ``multiprocessing.Pool.imap(double, range(n), chunksize=1)``, consumed the same way.

Parent memory: the peak growth of the parent's resident size (sampled every 1,000 results)
while ``tm.map`` runs over ``n`` items, after a warm-up; flat means it does not grow with ``n``.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pebble
import trio

import bench_jobs
from _common import Numbers, Params, now
from _libs import GENRO, start_method
from genro_tasks import TaskManager


async def _map_once(tm: TaskManager, n: int, chunksize: int | None = None) -> tuple[float, int]:
    """``tm.map`` over ``n`` trivial items: (items/s, the chunk size it ended with)."""
    t0 = now()
    total = 0
    async with tm.map(bench_jobs.double, range(n), chunksize=chunksize) as it:
        async for value in it:
            total += value
    elapsed = now() - t0
    if total != n * (n - 1):
        raise RuntimeError("wrong results")
    return n / elapsed, it.chunksize


async def _submit_all_once(tm: TaskManager, n: int) -> float:
    t0 = now()
    ids = [tm.submit(bench_jobs.double, i) for i in range(n)]
    total = 0
    for tid in ids:
        total += await tm.result(tid)
    elapsed = now() - t0
    if total != n * (n - 1):
        raise RuntimeError("wrong results")
    return n / elapsed


#: Pool.imap chunk sizes tried for its like-for-like row (the best is kept).
IMAP_CHUNKSIZES = (100, 1000, 10_000)


def _imap_best_chunk(n: int, workers: int) -> tuple[float, int]:
    """``multiprocessing.Pool.imap`` over ``n`` trivial items at its best chunk size: (items/s, that size)."""
    with multiprocessing.Pool(workers) as pool:
        sum(pool.imap(bench_jobs.double, range(min(n, 1000))))  # warm-up: every worker started
        best = (0.0, 0)
        for chunksize in IMAP_CHUNKSIZES:
            t0 = now()
            total = sum(pool.imap(bench_jobs.double, range(n), chunksize=chunksize))
            elapsed = now() - t0
            if total != n * (n - 1):
                raise RuntimeError("wrong results")
            best = max(best, (n / elapsed, chunksize))
    return best


async def genro_map(p: Params) -> Numbers:
    n = p.size
    # Every record of a submit-all batch is kept until its result is read.
    async with TaskManager(max_workers=p.workers, max_finished=max(n, 10_000)) as tm:
        await _submit_all_once(tm, min(n, 1000))  # warm-up, untimed
        maps: list[tuple[float, int]] = []
        ones: list[float] = []
        alls: list[float] = []
        for run in (maps, ones, alls, alls, ones, maps):
            tm.clear_completed()
            if run is maps:
                maps.append(await _map_once(tm, n))
            elif run is ones:
                ones.append((await _map_once(tm, n, chunksize=1))[0])
            else:
                alls.append(await _submit_all_once(tm, n))
    (best_map, chunksize), best_one, best_all = max(maps), max(ones), max(alls)
    imap_tps, imap_chunksize = await trio.to_thread.run_sync(_imap_best_chunk, n, p.workers)
    return {
        "tps": best_map,
        "chunksize": chunksize,
        "tps_chunksize1": best_one,
        "submit_all_tps": best_all,
        "map_vs_submit_all": best_map / best_all,
        "map1_vs_submit_all": best_one / best_all,
        "imap_best_tps": imap_tps,
        "imap_best_chunksize": imap_chunksize,
        "map_vs_imap_best": best_map / imap_tps,
    }


def _peer_map(lib: str, n: int, workers: int) -> float:
    """One peer's map over ``n`` trivial items (after a warm-up), in this (helper) thread; tasks/s."""
    family = lib.partition("+")[0]
    method = start_method(lib)
    ctx = multiprocessing.get_context(method)
    run: Callable[[range], Any]
    closer: Callable[[], None]
    if family == "ppe":
        ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        run = lambda items: ex.map(bench_jobs.double, items, chunksize=1)  # noqa: E731
        closer = ex.shutdown
    elif family == "pebble":
        pool = pebble.ProcessPool(max_workers=workers, context=ctx)
        run = lambda items: pool.map(bench_jobs.double, items, chunksize=1).result()  # noqa: E731

        def closer() -> None:
            pool.close()  # type: ignore[no-untyped-call]
            pool.join()
    elif family == "mp_pool":
        mp = ctx.Pool(workers)
        run = lambda items: mp.imap(bench_jobs.double, items, chunksize=1)  # noqa: E731

        def closer() -> None:
            mp.close()
            mp.join()
    else:
        raise ValueError(f"no map measurement for {lib!r}")
    try:
        sum(run(range(min(n, 1000))))  # warm-up: every worker started
        t0 = now()
        total = sum(run(range(n)))
        elapsed = now() - t0
    finally:
        closer()
    if total != n * (n - 1):
        raise RuntimeError("wrong results")
    return n / elapsed


async def map_throughput(lib: str, p: Params) -> Numbers:
    if lib == GENRO:
        return await genro_map(p)
    tps = await trio.to_thread.run_sync(_peer_map, lib, p.size, p.workers)
    return {"tps": tps}


def _rss() -> int:
    """This process's resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def map_memory(p: Params) -> Numbers:
    """Parent RSS growth while ``tm.map`` runs over ``p.size`` trivial items (default retention).

    The resident size is sampled every 1,000 results; the peak growth over the size after a
    warm-up is reported (``ru_maxrss`` would hide it under the start-up's own peak).
    """
    n = p.size
    async with TaskManager(max_workers=p.workers) as tm:
        await _map_once(tm, min(n, 1000))  # warm-up: imports, caches
        gc.collect()
        before = peak = _rss()
        t0 = now()
        total = 0
        async for value in tm.map(bench_jobs.double, range(n)):
            total += value
            if value % 2000 == 0:  # every 1,000th item (values are doubled)
                peak = max(peak, _rss())
        elapsed = now() - t0
        peak = max(peak, _rss())
    if total != n * (n - 1):
        raise RuntimeError("wrong results")
    return {"peak_rss_growth_mib": (peak - before) / 2**20, "tps": n / elapsed}
