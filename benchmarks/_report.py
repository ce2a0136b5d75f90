"""Turn the raw rounds into medians, ratios and targets; write RESULTS.md, results.json, results.png."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from _libs import BY_KEY, GENRO, PEERS

Raw = dict[str, dict[str, list[dict[str, Any]]]]
#: key -> lib -> value name -> {"median", "min", "max", "n"}
Summary = dict[str, dict[str, dict[str, dict[str, float]]]]


@dataclass(frozen=True)
class Spec:
    """One row of the plan: a results key, the _measure.py metric, its libraries and arguments."""

    key: str
    metric: str
    libs: tuple[str, ...]
    args: tuple[str, ...]
    #: The capability the row needs (None: always there); rows of an absent one are skipped.
    requires: str | None = None


@dataclass(frozen=True)
class Table:
    key: str
    value: str
    title: str
    unit: str
    higher_better: bool
    mult: float = 1.0
    #: The genro_tasks variant the table is about (the others are compared with it).
    subject: str = GENRO


HI, LO = True, False  # higher / lower is better
_STORE, _RAY = f"{GENRO}+store", f"{GENRO}+ray"

TABLES = (
    Table("throughput", "tps", "Throughput: {throughput:,} trivial tasks submitted at once, awaited", "tasks/s", HI),
    Table("roundtrip", "median_us", "Sequential round trip: one trivial task at a time, median per call", "µs", LO),
    Table(
        "roundtrip_one_core",
        "median_us",
        "Sequential round trip with the parent and its workers on one CPU (no cross-core wake-ups)",
        "µs",
        LO,
    ),
    Table("cancel", "cancel_ms", "Cancel latency: both workers busy, cancel request until the call returns", "ms", LO),
    Table("cancel", "restore_ms", "Capacity restore: cancel request until two new trivial jobs completed", "ms", LO),
    Table("cancel", "worker_gone_ms", "Cancelled job's worker process exited, from the cancel request", "ms", LO),
    Table("startup_2", "ready_ms", "Startup until ready, 2 workers (one trivial job per worker completed)", "ms", LO),
    Table("startup_8", "ready_ms", "Startup until ready, 8 workers (one trivial job per worker completed)", "ms", LO),
    Table("echo", "echo_s", "{echo_mib:g} MiB bytes argument echoed back by the job", "ms", LO, 1e3),
    Table("scale_big", "bytes_per_task", "Parent memory per queued task, {scale_big:,} queued", "bytes", LO),
    Table("scale_big", "drain_tps", "Draining {scale_big:,} queued trivial tasks", "tasks/s", HI),
    Table("scale_small", "drain_tps", "Draining {scale_small:,} queued trivial tasks", "tasks/s", HI),
    Table(
        "map",
        "tps",
        "`tm.map` over {map_size:,} trivial items (automatic chunks) vs each peer's own map (chunksize 1)",
        "tasks/s",
        HI,
    ),
    # Issue 16 item 7: the store's and the Ray backend's rows; each names its own subject.
    Table(
        "store_throughput", "tps", "Shared store: throughput, {throughput:,} trivial tasks", "tasks/s", HI, 1.0, _STORE
    ),
    Table(
        "store_roundtrip", "median_us", "Shared store: sequential round trip, median per call", "µs", LO, subject=_STORE
    ),
    Table(
        "store_cross_process_cancel",
        "cancel_ms",
        "Shared store: cancel from another process until CANCELLED",
        "ms",
        LO,
        subject=_STORE,
    ),
    Table(
        "ray_throughput",
        "tps",
        "Ray: throughput, {throughput:,} trivial tasks, genro_tasks vs plain Ray",
        "tasks/s",
        HI,
        subject=_RAY,
    ),
    Table("ray_roundtrip", "median_us", "Ray: sequential round trip, genro_tasks vs plain Ray", "µs", LO, subject=_RAY),
    Table("ray_cancel", "cancel_ms", "Ray: cancel latency, genro_tasks vs plain Ray", "ms", LO, subject=_RAY),
)

_NO_CANCEL = "cannot: a running ProcessPoolExecutor future cannot be cancelled"
_NO_STATE = "n/a: exposes no job state"
REASONS = {
    ("cancel", "ppe"): _NO_CANCEL,
    ("cancel", "ppe+forkserver"): _NO_CANCEL,
    ("status_truth", "trio_parallel"): _NO_STATE,
    ("status_truth", "anyio"): _NO_STATE,
}
#: Peers whose cancel returns before the worker has exited (so their cancel time is no reference
#: for a cancel that records CANCELLED only once the process is dead): see the worker-exit table.
CANCEL_RETURNS_EARLY = {"pebble": "pebble marks the future cancelled at once and kills the worker later"}
#: Notes shown under some tables.
_REF = "genro_tasks, with ppe as a reference (not in --tiny)."
NOTES = {
    ("scale_big", "bytes_per_task"): f"{_REF} tracemalloc growth over the submits, divided by the task count.",
    ("scale_big", "drain_tps"): f"{_REF} From the last submit until every result is in (ppe: jobs still queued).",
    ("scale_small", "drain_tps"): f"{_REF} Median of {{scale_repeat}} batches per round.",
    ("map", "tps"): "genro_tasks: `async for v in tm.map(...)` at its defaults: lazy submission, automatic "
    "chunk size (chunks grow until one takes about 5 ms, at most 1,000 items: the size reached is in the "
    "genro_tasks-only table below, with `chunksize=1` and `Pool.imap` at its best chunksize for like-for-like "
    "figures); peers: `ProcessPoolExecutor.map`, pebble's `ProcessPool.map`, `multiprocessing.Pool.imap`, "
    "each at chunksize 1, consumed in a helper thread. Best of two runs per round.",
    ("cancel", "cancel_ms"): "pebble's future is marked cancelled at once; its worker is killed later (see below).",
    ("cancel", "worker_gone_ms"): "Observed through a pidfd opened before the cancel: the kernel wakes the "
    "watcher at the exit (no polling).",
    (
        "store_throughput",
        "tps",
    ): "The subject is genro_tasks on the shared store; genro_tasks in memory is the reference.",
    ("store_roundtrip", "median_us"): "The subject is genro_tasks on the shared store; in memory is the reference.",
    ("ray_throughput", "tps"): "The subject is genro_tasks on the Ray backend; plain Ray is the reference.",
    ("ray_roundtrip", "median_us"): "The subject is genro_tasks on the Ray backend; plain Ray is the reference.",
    ("ray_cancel", "cancel_ms"): "The subject is genro_tasks on the Ray backend; plain Ray is the reference.",
}

DISTS = {GENRO: "genro-tasks", "trio": "trio", "trio_parallel": "trio-parallel", "anyio": "anyio"}
DISTS.update(pebble="Pebble", ray="ray", matplotlib="matplotlib")


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name, dist in DISTS.items():
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "os": platform.platform(),
        "load_before": list(os.getloadavg()),
        "versions": versions,
        "default_start_method": multiprocessing.get_context().get_start_method(),
    }


def summarize(raw: Raw) -> Summary:
    out: Summary = {}
    for key, libs in raw.items():
        for lib, rounds in libs.items():
            values: dict[str, list[float]] = {}
            for r in rounds:
                for name, v in (r.get("values") or {}).items():
                    values.setdefault(name, []).append(float(v))
            out.setdefault(key, {})[lib] = {
                name: {"median": statistics.median(vs), "min": min(vs), "max": max(vs), "n": len(vs)}
                for name, vs in values.items()
            }
    return out


def median(s: Summary, key: str, lib: str, value: str) -> float | None:
    stat = s.get(key, {}).get(lib, {}).get(value)
    return None if stat is None else stat["median"]


def num(v: float) -> str:
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def advantage(t: Table, genro: float, peer: float) -> float:
    """How many times better genro_tasks is than the peer (> 1: genro_tasks better)."""
    if genro <= 0 or peer <= 0:
        return float("nan")
    return genro / peer if t.higher_better else peer / genro


def errors_of(raw: Raw, key: str, lib: str) -> str:
    rounds = raw.get(key, {}).get(lib, [])
    errs = [r["error"] for r in rounds if not r.get("ok")]
    if not errs:
        return ""
    return f"error in {len(errs)} of {len(rounds)} rounds: {errs[0]}"


def leftovers(raw: Raw) -> list[str]:
    return [
        f"{key} / {lib}: {r['leftover_processes']} process(es) left after the measurement (killed)"
        for key, libs in raw.items()
        for lib, rounds in libs.items()
        for r in rounds
        if r.get("leftover_processes")
    ]


TargetRow = tuple[str, bool | None, str]


def _row(name: str, values: tuple[float | None, ...], test: Callable[..., bool], show: Callable[..., str]) -> TargetRow:
    if any(v is None for v in values):
        return (name, None, "not measured")
    return (name, test(*values), show(*values))


def best_peer(s: Summary, t: Table, family: str | None = None) -> tuple[str, float] | None:
    """The best peer variant's (key, median) in table ``t`` (every variant is driven at its best).

    For the cancel latency, peers whose call returns before the worker has exited are no reference.
    """
    early = CANCEL_RETURNS_EARLY.keys() if (t.key, t.value) == ("cancel", "cancel_ms") else set()
    found = {
        p: v
        for p in PEERS
        if (family is None or BY_KEY[p].family == family)
        and BY_KEY[p].family not in early
        and (v := median(s, t.key, p, t.value)) is not None
    }
    if not found:
        return None
    pick = max if t.higher_better else min
    best = pick(found, key=lambda p: found[p])
    return best, found[best]


def _table(key: str, value: str) -> Table:
    return next(t for t in TABLES if (t.key, t.value) == (key, value))


def _against_best(name: str, s: Summary, t: Table, factor: float, family: str | None = None) -> TargetRow:
    """genro_tasks at least ``factor`` times better than the best peer (variant) in table ``t``."""
    genro = median(s, t.key, GENRO, t.value)
    best = best_peer(s, t, family)
    if genro is None or best is None:
        return (name, None, "not measured")
    peer, v = best
    adv = advantage(t, genro, v)
    return (name, adv >= factor, f"{num(genro)} {t.unit} vs {peer} {num(v)} {t.unit} (advantage {adv:.2f}x)")


def target_rows(s: Summary) -> list[TargetRow]:
    """(target, passed or None if not measured, the numbers) for genro_tasks, all from this run.

    "The best peer" is the best variant of any peer (each start method, each driven at its best).
    """
    rows = [
        _against_best("Throughput >= 2x the best peer", s, _table("throughput", "tps"), 2.0),
        _against_best("Sequential round trip ahead of the best peer", s, _table("roundtrip", "median_us"), 1.0),
        _against_best(
            "Sequential round trip on one CPU ahead of the best peer",
            s,
            _table("roundtrip_one_core", "median_us"),
            1.0,
        ),
        _against_best(
            "Sequential round trip <= 0.6x trio_parallel's (its best start method)",
            s,
            _table("roundtrip", "median_us"),
            1 / 0.6,
            "trio_parallel",
        ),
        _against_best(
            "Cancel -> CANCELLED at most the best peer's (peers that return once the worker exited)",
            s,
            _table("cancel", "cancel_ms"),
            1.0,
        ),
    ]
    for name, key, value, limit, unit in (
        ("Cancel -> CANCELLED <= 5 ms median", "cancel", "cancel_ms", 5.0, "ms"),
        ("Capacity restored <= 25 ms median", "cancel", "restore_ms", 25.0, "ms"),
        ("Progress flood overhead <= 0.5 s", "progress_flood", "overhead_s", 0.5, "s"),
    ):
        v = median(s, key, GENRO, value)
        rows.append((name, None if v is None else v <= limit, "not measured" if v is None else f"{num(v)} {unit}"))
    rows += [
        _row(
            "Big-payload round trip <= 2x the raw pipe time",
            (median(s, "echo", GENRO, "echo_s"), median(s, "echo", "raw", "echo_s")),
            lambda g, r: g <= 2 * r,
            lambda g, r: f"{num(g * 1e3)} ms vs raw pipe {num(r * 1e3)} ms ({g / r:.2f}x)",
        ),
        _row(
            "Parent memory <= 2 KiB per queued task",
            (median(s, "scale_big", GENRO, "bytes_per_task"),),
            lambda v: v <= 2048,
            lambda v: f"{num(v)} bytes per task",
        ),
        _against_best("`tm.map` >= 2x the best peer's map", s, _table("map", "tps"), 2.0),
        _row(
            "`tm.map` >= 90% of submit-all-and-await, same manager, same run",
            (median(s, "map", GENRO, "map_vs_submit_all"),),
            lambda r: r >= 0.9,
            lambda r: f"{r:.2f}x of submit-all",
        ),
        _row(
            "`tm.map(chunksize=1)` >= 90% of submit-all-and-await, same manager, same run",
            (median(s, "map", GENRO, "map1_vs_submit_all"),),
            lambda r: r >= 0.9,
            lambda r: f"{r:.2f}x of submit-all",
        ),
        _row(
            "`tm.map` parent memory flat: long input's peak growth within 2x the short one's (+8 MiB)",
            (
                median(s, "map_memory_big", GENRO, "peak_rss_growth_mib"),
                median(s, "map_memory_small", GENRO, "peak_rss_growth_mib"),
            ),
            lambda big, small: big <= 2 * small + 8,
            lambda big, small: f"{num(big)} MiB vs {num(small)} MiB",
        ),
        _row(
            "Throughput with many queued within 15% of 1k queued",
            (median(s, "scale_big", GENRO, "drain_tps"), median(s, "scale_small", GENRO, "drain_tps")),
            lambda big, small: big >= 0.85 * small,
            lambda big, small: f"{num(big)} vs {num(small)} tasks/s ({big / small:.2f}x)",
        ),
        *_store_and_ray_rows(s),
    ]
    return rows


def _store_and_ray_rows(s: Summary) -> list[TargetRow]:
    """The targets of the shared store (issue 12) and of the Ray backend (issue 13), all from this run."""
    best = best_peer(s, _table("throughput", "tps"))
    return [
        _row(
            "Store throughput >= 50% of in-memory, same run",
            (median(s, "store_throughput", _STORE, "tps"), median(s, "store_throughput", GENRO, "tps")),
            lambda st, mem: st >= 0.5 * mem,
            lambda st, mem: f"{num(st)} vs {num(mem)} tasks/s ({st / mem:.2f}x)",
        ),
        _row(
            "Store throughput >= 2x the best peer's (in memory)",
            (median(s, "store_throughput", _STORE, "tps"), None if best is None else best[1]),
            lambda st, peer: st >= 2 * peer,
            lambda st, peer: f"{num(st)} vs {best[0] if best else '?'} {num(peer)} tasks/s ({st / peer:.2f}x)",
        ),
        _row(
            "Store round trip <= in-memory + 100 µs",
            (median(s, "store_roundtrip", _STORE, "median_us"), median(s, "store_roundtrip", GENRO, "median_us")),
            lambda st, mem: st <= mem + 100,
            lambda st, mem: f"{num(st)} µs vs {num(mem)} µs (+{num(st - mem)} µs)",
        ),
        _row(
            "Store: cancel from another process <= 100 ms median",
            (median(s, "store_cross_process_cancel", _STORE, "cancel_ms"),),
            lambda v: v <= 100,
            lambda v: f"{num(v)} ms",
        ),
        _row(
            "Store: 200,000 report_progress calls add <= 1 s",
            (median(s, "store_progress_flood", _STORE, "overhead_s"),),
            lambda v: v <= 1.0,
            lambda v: f"{num(v)} s",
        ),
        _row(
            "Ray backend throughput >= 80% of plain Ray's (<= 20% overhead)",
            (median(s, "ray_throughput", _RAY, "tps"), median(s, "ray_throughput", "ray", "tps")),
            lambda g, r: g >= 0.8 * r,
            lambda g, r: f"{num(g)} vs {num(r)} tasks/s ({g / r:.2f}x)",
        ),
    ]
