"""Benchmark genro_tasks against trio_parallel, anyio, ProcessPoolExecutor and pebble.

    python benchmarks/run.py            # full run (5 rounds)
    python benchmarks/run.py --quick    # short run: small sizes, 3 rounds
    python benchmarks/run.py --tiny     # smoke test: minimal sizes, 1 round
    python benchmarks/run.py --out DIR  # where RESULTS.md, results.json, results.png go

Rounds are interleaved (for each round, for each metric, for each library) and
every measurement runs in a fresh ``_measure.py`` process with a timeout; the
report gives the median of the rounds. Library order rotates from round to round.
"""

from __future__ import annotations

import argparse
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
from _markdown import markdown  # noqa: E402
from _report import LIBS, Raw, Spec, machine_info, summarize, target_rows  # noqa: E402

MEASURE = BENCH_DIR / "_measure.py"
POOL_LIBS = LIBS
CANCEL_LIBS = ("genro_tasks", "trio_parallel", "anyio", "pebble")  # ppe cannot cancel a running future
STATE_LIBS = ("genro_tasks", "ppe", "pebble")  # trio_parallel and anyio expose no job state


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


MODES = {
    "full": Mode("full", 5, 3000, 300, 20, 64 << 20, 200_000, 100_000, 1000, 10, (2, 8), 300.0, True),
    "quick": Mode("quick", 3, 1000, 300, 20, 64 << 20, 200_000, 20_000, 1000, 10, (2, 8), 60.0, True),
    "tiny": Mode("tiny", 1, 100, 20, 5, 4 << 20, 20_000, 2000, 500, 2, (2,), 30.0, False),
}


def specs(m: Mode) -> list[Spec]:
    scale_libs = ("genro_tasks", "ppe") if m.ppe_scale else ("genro_tasks",)
    return [
        Spec("throughput", "throughput", POOL_LIBS, ("--size", str(m.throughput))),
        Spec("roundtrip", "roundtrip", POOL_LIBS, ("--calls", str(m.calls), "--warmup", str(m.warmup))),
        Spec("cancel", "cancel", CANCEL_LIBS, ()),
        *(Spec(f"startup_{w}", "startup", POOL_LIBS, ("--workers", str(w))) for w in m.startup_workers),
        Spec("echo", "echo", (*POOL_LIBS, "raw"), ("--size", str(m.echo_bytes))),
        Spec("progress_flood", "progress_flood", ("genro_tasks",), ("--size", str(m.flood))),
        Spec("progress_latency", "progress_latency", ("genro_tasks",), ()),
        Spec("scale_big", "scale", scale_libs, ("--size", str(m.scale_big))),
        Spec("scale_small", "scale", scale_libs, ("--size", str(m.scale_small), "--repeat", str(m.scale_repeat))),
        Spec("status_truth", "status_truth", STATE_LIBS, ()),
    ]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="small sizes, 3 rounds (about 1.5 minutes)")
    group.add_argument("--tiny", action="store_true", help="minimal sizes, 1 round (smoke test, < 60 s)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="output directory (default: benchmarks/)")
    parser.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    args = parser.parse_args()
    mode = MODES["quick" if args.quick else "tiny" if args.tiny else "full"]
    rounds = args.rounds or mode.rounds
    plan = specs(mode)
    raw: Raw = {s.key: {lib: [] for lib in s.libs} for s in plan}
    started = time.monotonic()
    meta = machine_info()
    meta.update(mode=mode.name, rounds=rounds, params=asdict(mode))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
