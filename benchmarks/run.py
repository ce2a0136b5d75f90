"""Benchmark genro_tasks against trio_parallel, anyio, ProcessPoolExecutor and pebble.

    python benchmarks/run.py                # full run (5 rounds) -> benchmarks/ (the published results)
    python benchmarks/run.py --quick        # short run: small sizes, 3 rounds -> benchmarks/out/
    python benchmarks/run.py --tiny         # smoke test: minimal sizes, 1 round -> benchmarks/out/
    python benchmarks/run.py --out DIR      # where RESULTS.md, results.json, results.png go
    python benchmarks/run.py --allow-dirty  # measure uncommitted code; the output says it is not publishable

Results come from a commit: the runner records it, and refuses a checkout with
uncommitted changes, or a genro_tasks imported from elsewhere, unless
``--allow-dirty`` (which marks the output as not publishable and writes it to
benchmarks/out/ by default). Only a clean full run writes to benchmarks/ by default.

Rounds are interleaved (for each round, for each metric, for each library) and
every measurement runs in a fresh ``_measure.py`` process with a timeout; the
report gives the median of the rounds. Library order rotates from round to round.
Rows whose capability is absent at this commit (the shared store, the Ray
backend) are skipped, and the report says why.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from _chart import write_chart  # noqa: E402
from _libs import GENRO, MAP_LIBS, POOL_LIBS, RAW  # noqa: E402
from _markdown import markdown  # noqa: E402
from _report import Raw, Spec, machine_info, summarize, target_rows  # noqa: E402

MEASURE = BENCH_DIR / "_measure.py"
ROOT = BENCH_DIR.parent
#: The published results: a clean tree may have them modified (they are what a run writes).
PUBLISHED = ("benchmarks/RESULTS.md", "benchmarks/results.json", "benchmarks/results.png")
GENRO_SPAWN = f"{GENRO}+spawn"
# ppe cannot cancel a running future.
CANCEL_LIBS = (
    GENRO,
    GENRO_SPAWN,
    *(k for k in POOL_LIBS if k.partition("+")[0] in ("trio_parallel", "anyio", "pebble")),
)
STATE_LIBS = (GENRO, "ppe", "pebble")  # trio_parallel and anyio expose no job state; start method irrelevant


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int
    throughput: int
    calls: int
    warmup: int
    echo_bytes: int
    flood: int
    scale_big: int
    scale_small: int
    scale_repeat: int
    startup_workers: tuple[int, ...]
    timeout: float
    ppe_scale: bool
    #: tm.map rows (issue 17): items mapped, and the two input lengths of the memory rows.
    map_size: int = 100_000
    map_mem_small: int = 10_000
    map_mem_big: int = 1_000_000


MODES = {
    "full": Mode("full", 5, 3000, 300, 20, 64 << 20, 200_000, 100_000, 1000, 10, (2, 8), 300.0, True),
    "quick": Mode(
        "quick", 3, 1000, 300, 20, 64 << 20, 200_000, 20_000, 1000, 10, (2, 8), 60.0, True, 20_000, 10_000, 100_000
    ),
    "tiny": Mode("tiny", 1, 100, 20, 5, 4 << 20, 20_000, 2000, 500, 2, (2,), 30.0, False, 2000, 1000, 10_000),
}


def specs(m: Mode) -> list[Spec]:
    """Every row of the plan, including those whose capability may be absent (see :func:`capability_gaps`)."""
    scale_libs = (GENRO, "ppe") if m.ppe_scale else (GENRO,)
    calls = ("--calls", str(m.calls), "--warmup", str(m.warmup))
    return [
        Spec("throughput", "throughput", POOL_LIBS, ("--size", str(m.throughput))),
        Spec("roundtrip", "roundtrip", (*POOL_LIBS, RAW), calls),
        Spec("roundtrip_one_core", "roundtrip", (*POOL_LIBS, RAW), (*calls, "--one-core")),
        Spec("cancel", "cancel", CANCEL_LIBS, ()),
        *(
            Spec(f"startup_{w}", "startup", (GENRO, GENRO_SPAWN, *POOL_LIBS[1:]), ("--workers", str(w)))
            for w in m.startup_workers
        ),
        Spec("echo", "echo", (*POOL_LIBS, RAW), ("--size", str(m.echo_bytes))),
        Spec("progress_flood", "progress_flood", (GENRO,), ("--size", str(m.flood))),
        Spec("progress_latency", "progress_latency", (GENRO,), ()),
        Spec("scale_big", "scale", scale_libs, ("--size", str(m.scale_big))),
        Spec("scale_small", "scale", scale_libs, ("--size", str(m.scale_small), "--repeat", str(m.scale_repeat))),
        Spec("status_truth", "status_truth", STATE_LIBS, ()),
        Spec("map", "map", MAP_LIBS, ("--size", str(m.map_size))),
        Spec("map_memory_small", "map_memory", (GENRO,), ("--size", str(m.map_mem_small))),
        Spec("map_memory_big", "map_memory", (GENRO,), ("--size", str(m.map_mem_big))),
        # Issue 16 item 7: rows for capabilities as they land (skipped while absent).
        Spec("store_throughput", "throughput", (GENRO, f"{GENRO}+store"), ("--size", str(m.throughput)), "store"),
        Spec("store_roundtrip", "roundtrip", (GENRO, f"{GENRO}+store"), calls, "store"),
        Spec("store_cross_process_cancel", "cross_process_cancel", (f"{GENRO}+store",), (), "store"),
        Spec("store_progress_flood", "progress_flood", (f"{GENRO}+store",), ("--size", str(m.flood)), "store"),
        Spec("ray_throughput", "throughput", (f"{GENRO}+ray", "ray"), ("--size", str(m.throughput)), "ray"),
        Spec("ray_roundtrip", "roundtrip", (f"{GENRO}+ray", "ray"), calls, "ray"),
        Spec("ray_cancel", "cancel", (f"{GENRO}+ray", "ray"), (), "ray"),
    ]


def _tm_parameters() -> set[str]:
    from genro_tasks import TaskManager

    return set(inspect.signature(TaskManager).parameters)


def capability_gaps() -> dict[str, str]:
    """Capability -> why it is absent at this commit (absent capabilities' rows are skipped, not failed)."""
    gaps = {}
    if "store" not in _tm_parameters():
        gaps["store"] = "genro_tasks has no shared store at this commit (issue 12)"
    if "backend" not in _tm_parameters():
        gaps["ray"] = "genro_tasks has no Ray backend at this commit (issue 13)"
    elif importlib.util.find_spec("ray") is None:
        gaps["ray"] = "Ray is not installed"
    return gaps


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run.py: `git {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def source_problems() -> tuple[str, list[str]]:
    """The commit measured, and what stops the results from being that commit's (empty: publishable)."""
    commit = _git("rev-parse", "HEAD").strip()
    problems = []
    changed = [
        line[3:]
        for line in _git("status", "--porcelain", "--untracked-files=normal").splitlines()
        if line[3:] not in PUBLISHED
    ]
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        problems.append(f"uncommitted changes ({shown})")
    spec = importlib.util.find_spec("genro_tasks")  # finds it without importing it
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    if origin is None or not origin.is_relative_to(ROOT.resolve()):
        problems.append("genro_tasks is not imported from this checkout (pip install -e . here)")
    return commit, problems


def _session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (every measurement runs in a session of its own)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def _reap_leftovers(sid: int) -> int:
    """Give the measurement's processes 3 s to go, then SIGKILL what is left; return how many were left."""
    deadline = time.monotonic() + 3.0
    while (left := _session_members(sid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left)


def scrub(text: str) -> str:
    """``text`` without this machine's paths (the checkout, the interpreter, the home directory)."""
    for path, name in ((str(ROOT), "<checkout>"), (sys.prefix, "<python>"), (os.path.expanduser("~"), "~")):
        if len(path) > 1:
            text = text.replace(path, name)
    return text


def run_one(lib: str, spec: Spec, timeout: float) -> dict[str, Any]:
    """One measurement in a fresh process (its own session, so nothing it starts can escape)."""
    inner = max(timeout - 15, timeout * 0.8)  # the in-process limit fires first and reports cleanly
    cmd = [sys.executable, str(MEASURE), lib, spec.metric, *spec.args, "--timeout", f"{inner:g}"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        result: dict[str, Any] | None = None
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                result = json.loads(line)
                break
        if result is None:
            tail = (err.strip().splitlines() or ["no output"])[-1]
            result = {"ok": False, "error": f"exit code {proc.returncode}: {tail}"[:500]}
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the leader is not reaped yet: the group is ours
        proc.communicate()
        result = {"ok": False, "error": f"timeout: no answer within {timeout:g} s"}
    if "error" in result:
        result["error"] = scrub(result["error"])
    leftovers = _reap_leftovers(proc.pid)
    if leftovers:
        result["leftover_processes"] = leftovers
    result["wall_s"] = round(time.monotonic() - t0, 3)
    return result


def _short(result: dict[str, Any]) -> str:
    if not result.get("ok"):
        return f"ERROR {result.get('error')}"
    return " ".join(f"{k}={v:.4g}" for k, v in result["values"].items())


def write_all(out: Path, meta: dict[str, Any], plan: list[Spec], raw: Raw) -> list[Path]:
    """Write RESULTS.md, results.json (every raw number) and results.png into ``out``."""
    summary = summarize(raw)
    targets = target_rows(summary)
    params = dict(meta["params"])
    params["echo_mib"] = params["echo_bytes"] / (1 << 20)
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = out / "RESULTS.md", out / "results.json", out / "results.png"
    md.write_text(markdown(meta, params, plan, raw, summary, targets))
    plan_json = [asdict(p) for p in plan]
    data = {"meta": meta, "plan": plan_json, "raw": raw, "summary": summary, "targets": targets}
    js.write_text(json.dumps(data, indent=1) + "\n")
    write_chart(png, summary, meta)
    return [md, js, png]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``out`` resolved: benchmarks/ for a clean full run, benchmarks/out/ otherwise."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="small sizes, 3 rounds (a few minutes)")
    group.add_argument("--tiny", action="store_true", help="minimal sizes, 1 round (smoke test, about a minute)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: benchmarks/ for a full run, else benchmarks/out/)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="measure a checkout with uncommitted changes; the output is marked as not publishable",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.out is None:
        publish = not (args.quick or args.tiny or args.allow_dirty)
        args.out = BENCH_DIR if publish else BENCH_DIR / "out"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    commit, problems = source_problems()
    if problems and not args.allow_dirty:
        print(
            f"run.py: refusing to measure: {'; '.join(problems)}. Results must come from a commit: commit "
            "(and pip install -e . in this checkout), or pass --allow-dirty for output marked not publishable.",
            file=sys.stderr,
        )
        return 2
    mode = MODES["quick" if args.quick else "tiny" if args.tiny else "full"]
    rounds = args.rounds or mode.rounds
    gaps = capability_gaps()
    everything = specs(mode)
    plan = [s for s in everything if s.requires not in gaps]
    skipped = {s.key: gaps[s.requires] for s in everything if s.requires in gaps}
    raw: Raw = {s.key: {lib: [] for lib in s.libs} for s in plan}
    started = time.monotonic()
    meta = machine_info()
    meta.update(mode=mode.name, rounds=rounds, params=asdict(mode), commit=commit, skipped=skipped)
    meta.update(publishable=not problems, not_publishable_because=problems)
    for r in range(rounds):
        for spec in plan:
            shift = r % len(spec.libs)
            for lib in spec.libs[shift:] + spec.libs[:shift]:  # rotate the order between rounds
                result = run_one(lib, spec, mode.timeout)
                raw[spec.key][lib].append(result)
                print(f"[{r + 1}/{rounds}] {spec.key:<16} {lib:<13} {_short(result)}  ({result['wall_s']:.1f} s)")
    meta["load_after"] = list(os.getloadavg())
    meta["duration_s"] = round(time.monotonic() - started, 1)
    paths = write_all(args.out, meta, plan, raw)
    print(f"done in {meta['duration_s']} s: " + ", ".join(str(p) for p in paths))
    if problems:
        print(f"NOT PUBLISHABLE: {'; '.join(problems)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
