"""``python -m genro_tasks demo``: a live view of a TaskManager at work.

Eight realistic jobs on three workers: progress bars that move, queued jobs
visibly PENDING, one job hard-cancelled mid-run, one crashing its worker (the
others carry on), one hitting its timeout, then a summary table. On a
terminal it redraws in place; otherwise (CI, a pipe) it prints plain lines.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import trio

from genro_tasks_worker import demo_jobs

from ._manager import TaskManager
from ._task import TaskInfo, TaskStatus


@dataclass(frozen=True)
class _Job:
    task_id: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    timeout: float | None = None
    note: str = ""


_JOBS = (
    _Job("export-report", demo_jobs.export_report, (12_000, 3.0)),
    _Job("resize-images", demo_jobs.resize_images, (24, 2.5)),
    _Job("reindex-search", demo_jobs.reindex_search, (80_000, 12.0), note="cancelled by the demo at 40%"),
    _Job("train-model", demo_jobs.train_model, (12, 4.0)),
    _Job("native-plugin", demo_jobs.native_plugin, (1.5,), note="segfaults its worker"),
    _Job("sync-mailbox", demo_jobs.sync_mailbox, (60.0,), timeout=2.0, note="hangs; timeout=2s"),
    _Job("crunch-numbers", demo_jobs.crunch_numbers, (500_000,)),
    _Job("build-thumbnails", demo_jobs.build_thumbnails, (30, 2.0)),
)

_COLORS = {
    TaskStatus.PENDING: "\x1b[2m",
    TaskStatus.RUNNING: "\x1b[36m",
    TaskStatus.COMPLETED: "\x1b[32m",
    TaskStatus.FAILED: "\x1b[31m",
    TaskStatus.CANCELLED: "\x1b[33m",
}
_RESET = "\x1b[0m"
_BAR = 24


def _bar(progress: float | None) -> str:
    filled = round((progress or 0.0) * _BAR)
    return "█" * filled + "░" * (_BAR - filled)


def _elapsed(info: TaskInfo, now: float, t0: float) -> str:
    if info.started_at is None:
        return "   -  "
    start = info.started_at.timestamp()
    end = info.completed_at.timestamp() if info.completed_at else now
    return f"{end - start:5.1f}s"


class _Screen:
    """Redraws one line per task in place (terminal mode)."""

    def __init__(self, out: TextIO, ids: list[str]) -> None:
        self.out = out
        self.ids = ids
        self.drawn = 0

    def draw(self, infos: dict[str, TaskInfo], t0: float, header: str) -> None:
        now = time.time()
        lines = [f"\x1b[1m{header}\x1b[0m"]
        for tid in self.ids:
            info = infos[tid]
            color = _COLORS[info.status]
            pct = f"{(info.progress or 0) * 100:3.0f}%"
            detail = info.error if info.status is TaskStatus.FAILED else (info.progress_message or "")
            lines.append(
                f"{tid:<17} {color}{_bar(info.progress)} {pct} {info.status.value.upper():<9}{_RESET} "
                f"{_elapsed(info, now, t0)}  {(detail or '')[:48]}"
            )
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F")
        self.out.write("".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self.drawn = len(lines)


class _Plain:
    """Prints a line per status change and per quarter of progress (pipe mode)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last: dict[str, tuple[TaskStatus, int]] = {}

    def update(self, info: TaskInfo, t0: float) -> None:
        quarter = int((info.progress or 0) * 4)
        key = (info.status, quarter)
        if self.last.get(info.task_id) == key:
            return
        self.last[info.task_id] = key
        extra = info.error if info.status is TaskStatus.FAILED else (info.progress_message or "")
        pct = f"{(info.progress or 0) * 100:3.0f}%"
        self.out.write(
            f"[{time.monotonic() - t0:6.2f}s] {info.task_id:<17} {info.status.value.upper():<9} {pct}  {extra}\n"
        )
        self.out.flush()


async def run_demo(out: TextIO, *, workers: int = 3, live: bool | None = None) -> int:
    """Run the demo, writing to ``out``; return the process exit status.

    **Cancellation:** Leaving early shuts the demo's TaskManager down with
    ``wait=False``: its workers are killed.
    """
    if live is None:
        live = out.isatty()
    t0 = time.monotonic()
    ids = [job.task_id for job in _JOBS]
    out.write(
        f"genro-tasks demo: {len(_JOBS)} jobs on {workers} worker processes (parent pid {os.getpid()})\n"
        + "".join(f"  {job.task_id}: {job.note}\n" for job in _JOBS if job.note)
    )
    async with TaskManager(max_workers=workers) as tm, tm.open_change_stream() as changes:
        for job in _JOBS:
            view = tm.options(timeout=job.timeout)
            view.submit(job.func, *job.args, task_id=job.task_id, metadata={"note": job.note})
        infos = {tid: await tm.info(tid) for tid in ids}
        screen = _Screen(out, ids) if live else None
        plain = None if live else _Plain(out)
        if plain is not None:
            for tid in ids:
                plain.update(infos[tid], t0)

        async def cancel_half_way() -> None:
            async for info in tm.watch("reindex-search"):
                if (info.progress or 0) >= 0.4:
                    await tm.cancel("reindex-search")
                    return

        async def render() -> None:
            while True:
                with trio.move_on_after(0.1):
                    info = await anext(changes)
                    infos[info.task_id] = info
                    if plain is not None:
                        plain.update(info, t0)
                if screen is not None:
                    screen.draw(infos, t0, f"elapsed {time.monotonic() - t0:5.1f}s")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_half_way)
            nursery.start_soon(render)
            for tid in ids:
                try:
                    await tm.result(tid)
                except Exception:
                    pass
            nursery.cancel_scope.cancel()
        final = {tid: await tm.info(tid) for tid in ids}
        if screen is not None:
            screen.draw(final, t0, f"finished in {time.monotonic() - t0:5.1f}s")
        elif plain is not None:
            for tid in ids:
                plain.update(final[tid], t0)
    _summary(out, [final[tid] for tid in ids], time.monotonic() - t0)
    expected = {
        "reindex-search": TaskStatus.CANCELLED,
        "native-plugin": TaskStatus.FAILED,
        "sync-mailbox": TaskStatus.FAILED,
    }
    wrong = [tid for tid in ids if final[tid].status is not expected.get(tid, TaskStatus.COMPLETED)]
    if wrong:
        out.write(f"unexpected outcome for: {', '.join(wrong)}\n")
        return 1
    return 0


def _summary(out: TextIO, infos: list[TaskInfo], total: float) -> None:
    out.write("\nSummary\n")
    out.write(f"{'task':<17} {'status':<10} {'ran':>6}  {'worker':>7}  outcome\n")
    out.write(f"{'-' * 17} {'-' * 10} {'-' * 6}  {'-' * 7}  {'-' * 40}\n")
    for info in infos:
        ran = (
            f"{(info.completed_at - info.started_at).total_seconds():5.1f}s"
            if info.started_at and info.completed_at
            else "    - "
        )
        outcome = info.error or info.progress_message or ""
        pid = info.worker_pid or "-"
        out.write(f"{info.task_id:<17} {info.status.value.upper():<10} {ran:>6}  {pid:>7}  {outcome[:70]}\n")
    counts: dict[str, int] = {}
    for info in infos:
        counts[info.status.value] = counts.get(info.status.value, 0) + 1
    out.write(f"\n{', '.join(f'{n} {s}' for s, n in sorted(counts.items()))} in {total:.1f}s\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genro_tasks", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the live demo (about 10 seconds)")
    demo.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    mode = demo.add_mutually_exclusive_group()
    mode.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    mode.add_argument("--live", action="store_true", help="redraw in place even when not a terminal")
    args = parser.parse_args(argv)
    live = True if args.live else False if args.plain else None
    return trio.run(lambda: run_demo(sys.stdout, workers=args.workers, live=live))
