"""One measurement per invocation, in a fresh process: prints one JSON line.

    python benchmarks/_measure.py LIB METRIC [--size N] [--workers N] [--calls N] [--warmup N]
                                             [--repeat N] [--timeout S]

Output: ``{"ok": true, "values": {...}}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

BENCH_DIR = str(Path(__file__).resolve().parent)
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)  # workers inherit sys.path and import bench_jobs from here

# Workers of every library import this main module again (as __mp_main__): keep its
# top level light, and import the libraries only inside the functions.
if TYPE_CHECKING:
    from _common import Numbers, Params, PoolOpener

from _libs import GENRO, KEYS, RAW, start_method  # noqa: E402 - stdlib only, light

POOL_METRICS = ("throughput", "roundtrip", "cancel", "startup", "echo", "status_truth")
GENRO_METRICS = ("progress_flood", "progress_latency", "scale", "map_memory")
#: tm.map against the peers' own map functions (issue 17).
MAP_METRICS = ("map",)
#: The shared store (issue 12): cancel from another process sharing the store.
STORE_METRICS = ("cross_process_cancel",)


def _opener(lib: str, p: Params) -> PoolOpener:
    if lib == f"{GENRO}+store":
        import _store

        return _store.store_opener(p.tmpdir)
    if lib == f"{GENRO}+ray" or lib == "ray":
        import _ray

        return _ray.open_genro_ray if lib == f"{GENRO}+ray" else _ray.open_ray
    if lib.partition("+")[0] == GENRO:
        import functools

        from _genro import open_genro

        method = start_method(lib)
        return open_genro if method is None else functools.partial(open_genro, start_method=method)
    from _peers import opener

    return opener(lib)


def _coroutine(lib: str, metric: str, p: Params) -> Callable[[], Awaitable[Numbers]]:
    if metric in MAP_METRICS or (lib == GENRO and metric == "map_memory"):
        import _map

        if metric == "map":
            return lambda: _map.map_throughput(lib, p)
        return lambda: _map.map_memory(p)
    if metric in POOL_METRICS:
        import _metrics

        func: Callable[[PoolOpener, Params], Awaitable[Numbers]] = getattr(_metrics, metric)
        opener = _opener(lib, p)
        return lambda: func(opener, p)
    if lib == GENRO and metric in GENRO_METRICS:
        import _genro

        genro_func: Callable[[Params], Awaitable[Numbers]] = getattr(_genro, metric)
        return lambda: genro_func(p)
    if lib == f"{GENRO}+store" and metric == "progress_flood":
        import _genro

        return lambda: _genro.progress_flood(p, store=p.tmpdir / "tasks.db")
    if lib == f"{GENRO}+store" and metric in STORE_METRICS:
        import _store

        return lambda: _store.cross_process_cancel(p)
    if lib.partition("+")[0] == "ppe" and metric == "scale":
        from _peers import ppe_scale

        return lambda: ppe_scale(p, start_method(lib))
    raise ValueError(f"no measurement {metric!r} for {lib!r}")


def measure(lib: str, metric: str, p: Params, timeout: float) -> Numbers:
    import trio

    if lib == RAW:
        if metric == "echo":
            from _metrics import raw_pipe_echo

            return raw_pipe_echo(p)
        if metric == "roundtrip":
            from raw_roundtrip import measure as raw_roundtrip

            return {"median_us": trio.run(raw_roundtrip, p.calls + p.warmup, p.warmup)}
        raise ValueError("raw only measures echo and roundtrip")

    make = _coroutine(lib, metric, p)

    async def body() -> Numbers:
        with trio.fail_after(timeout):
            return await make()

    if lib.partition("+")[0] == "anyio":
        import anyio

        return anyio.run(body, backend="trio")
    return trio.run(body)


def describe(exc: BaseException) -> str:
    """``Type: message`` of the innermost exception (unwrapping single-exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:500]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lib", choices=KEYS)
    parser.add_argument("metric", choices=(*POOL_METRICS, *GENRO_METRICS, *MAP_METRICS, *STORE_METRICS))
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1, help="scale: batches to drain (median rate)")
    parser.add_argument("--timeout", type=float, default=280.0, help="in-process limit, seconds")
    parser.add_argument(
        "--one-core",
        action="store_true",
        help="run this process and every process it starts (workers, servers) on one CPU",
    )
    args = parser.parse_args()
    if args.one_core:  # inherited by every child: the kernel's choice of cores is taken out
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    from _common import Params

    with tempfile.TemporaryDirectory(prefix="genro-bench-") as tmp:
        p = Params(args.workers, args.size, args.calls, args.warmup, args.repeat, Path(tmp))
        try:
            values = measure(args.lib, args.metric, p, args.timeout)
        except BaseException as exc:
            print(json.dumps({"ok": False, "error": describe(exc)}), flush=True)
            return 1
    print(json.dumps({"ok": True, "values": values}), flush=True)
    return 0


if __name__ == "__main__":  # workers (spawn, forkserver, anyio) import this module: keep the guard
    sys.exit(main())
