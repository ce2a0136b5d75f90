"""``python -m genro_tasks demo``: a live view of a TaskManager at work.

Eight realistic jobs on three workers: progress bars that move, queued jobs
visibly PENDING, one job hard-cancelled mid-run, one crashing its worker (the
others carry on), one hitting its timeout, then a summary table.

On a terminal, with rich installed (the ``demo`` extra), a live table is
redrawn in place and laid out for the terminal's width at every refresh.
Otherwise (rich missing, stdout a pipe, or ``--plain``) it prints plain lines:
one per status change and per quarter of progress.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import trio

from genro_tasks_worker import demo_jobs

from ._demo_text import detail, elapsed, percent, shorten, wrap
from ._manager import TaskManager
from ._task import TaskInfo, TaskStatus

#: Exit status after Ctrl-C, as shells report a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130
MAX_WORKERS = 64


@dataclass(frozen=True)
class _Job:
    task_id: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    timeout: float | None = None
    note: str = ""
    expected: TaskStatus = TaskStatus.COMPLETED


_JOBS = (
    _Job("export-report", demo_jobs.export_report, (12_000, 3.0)),
    _Job("resize-images", demo_jobs.resize_images, (24, 2.5)),
    _Job(
        "reindex-search",
        demo_jobs.reindex_search,
        (80_000, 12.0),
        note="cancelled by the demo at 40%",
        expected=TaskStatus.CANCELLED,
    ),
    _Job("train-model", demo_jobs.train_model, (12, 4.0)),
    _Job("native-plugin", demo_jobs.native_plugin, (1.5,), note="segfaults its worker", expected=TaskStatus.FAILED),
    _Job(
        "sync-mailbox",
        demo_jobs.sync_mailbox,
        (60.0,),
        timeout=2.0,
        note="hangs; timeout=2s",
        expected=TaskStatus.FAILED,
    ),
    _Job("crunch-numbers", demo_jobs.crunch_numbers, (500_000,)),
    _Job("build-thumbnails", demo_jobs.build_thumbnails, (30, 2.0)),
)
_CANCEL_AT = ("reindex-search", 0.4)


def _submit_jobs(tm: TaskManager) -> None:
    """Every submit call of the demo, in one place."""
    for job in _JOBS:
        tm.options(timeout=job.timeout).submit(job.func, *job.args, task_id=job.task_id, metadata={"note": job.note})


class _View(Protocol):
    """What the runner needs from a view. Every method writes to the output (blocking I/O)."""

    def print(self, text: str) -> None: ...
    def start(self) -> None: ...
    def refresh(self) -> None: ...
    def stop(self) -> None: ...
    def summary(self, infos: Sequence[TaskInfo]) -> None: ...


class _PlainView:
    """Plain lines: one per status change and per quarter of progress, none with trailing spaces.

    On a terminal each line is shortened (at a word) to the terminal's width;
    into a pipe, lines are written whole.
    """

    def __init__(self, out: TextIO, ids: Sequence[str], infos: dict[str, TaskInfo], t0: float) -> None:
        self.out = out
        self.ids = ids
        self.infos = infos
        self.t0 = t0
        self.last: dict[str, tuple[TaskStatus, int]] = {}
        self.width = shutil.get_terminal_size().columns if out.isatty() else None

    def _write(self, lines: list[str]) -> None:
        if lines:
            self.out.write("".join(line.rstrip() + "\n" for line in lines))
            self.out.flush()

    def print(self, text: str) -> None:
        if self.width is None:
            self._write(text.splitlines())
        else:
            self._write([part for line in text.splitlines() for part in wrap(line, self.width)])

    def start(self) -> None:
        self.refresh()

    def stop(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        lines = []
        for tid in self.ids:
            info = self.infos[tid]
            key = (info.status, int((info.progress or 0) * 4))
            if self.last.get(tid) == key:
                continue
            self.last[tid] = key
            line = f"[{time.monotonic() - self.t0:6.2f}s] {tid:<17} {info.status.value.upper():<9} {percent(info)}"
            text = detail(info)
            if text and self.width is not None:
                text = shorten(text, max(0, self.width - len(line) - 2), "...")
            lines.append(f"{line}  {text}")
        self._write(lines)

    def summary(self, infos: Sequence[TaskInfo]) -> None:
        head = f"{'task':<17} {'status':<10} {'ran':>6} {'worker':>7}  "
        lines = ["", "Summary", head + "outcome", f"{'-' * 17} {'-' * 10} {'-' * 6} {'-' * 7}  {'-' * 7}"]
        room = None if self.width is None else max(20, self.width - len(head))
        for info in infos:
            ran = elapsed(info) if info.completed_at else "-"
            outcome = info.error or info.progress_message or ""
            parts = [outcome] if room is None else wrap(outcome, room)
            row = f"{info.task_id:<17} {info.status.value.upper():<10} {ran:>6} {info.worker_pid or '-':>7}  "
            lines.append(row + parts[0])
            lines.extend(" " * len(head) + part for part in parts[1:])
        self._write(lines)


def _make_view(
    out: TextIO, live: bool | None, ids: Sequence[str], infos: dict[str, TaskInfo], t0: float, workers: int
) -> tuple[_View, str | None]:
    """The rich live view on a terminal (or when forced), else plain lines; plus a note on why plain."""
    want_live = out.isatty() if live is None else live
    if not want_live:
        return _PlainView(out, ids, infos, t0), None
    try:
        from ._demo_rich import RichView, TaskTable
    except ImportError:
        why = "the live view needs rich: pip install 'genro-tasks[demo]'; showing plain lines"
        return _PlainView(out, ids, infos, t0), why

    def title() -> str:
        done = sum(infos[t].status.is_terminal for t in ids)
        return f"{done}/{len(ids)} done on {workers} workers, {time.monotonic() - t0:.1f}s"

    return RichView(out, TaskTable(ids, infos, title), force_terminal=live is True), None


async def _call(fn: Callable[[], None]) -> None:
    """Run a view call (terminal writes) in a thread: the event loop never waits on the terminal."""
    await trio.to_thread.run_sync(fn)


@asynccontextmanager
async def _showing(view: _View) -> AsyncIterator[None]:
    await _call(view.start)
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await _call(view.stop)


async def run_demo(out: TextIO, *, workers: int = 3, live: bool | None = None) -> int:
    """Run the demo, writing to ``out``; return the process exit status.

    Args:
        out: Where to draw (normally ``sys.stdout``).
        workers: Worker processes for the demo's TaskManager.
        live: True for the live table even when ``out`` is not a terminal,
            False for plain lines, None to decide by ``out.isatty()``.

    Returns:
        0 if every job ended as the demo expects, 1 if one did not, and
        130 if the demo was interrupted with Ctrl-C.

    **Cancellation:** Leaving early shuts the demo's TaskManager down with
    ``wait=False``: its running jobs are killed and recorded CANCELLED. While
    it runs, SIGINT (Ctrl-C) does the same, is reported in one line, and
    ``run_demo`` returns 130 instead of raising KeyboardInterrupt. It must
    run in the main thread (it receives SIGINT).
    """
    t0 = time.monotonic()
    ids = [job.task_id for job in _JOBS]
    infos: dict[str, TaskInfo] = {}
    view, why_plain = _make_view(out, live, ids, infos, t0, workers)
    intro = [f"genro-tasks demo: {len(_JOBS)} jobs on {workers} worker processes (parent pid {os.getpid()})"]
    intro += [f"  {job.task_id}: {job.note}" for job in _JOBS if job.note]
    if why_plain:
        intro.append(why_plain)
    await _call(lambda: view.print("\n".join(intro)))
    tm = TaskManager(max_workers=workers)
    cancelled_by_demo: set[str] = set()
    interrupted = False
    # Ctrl-C arrives here as a message instead of a KeyboardInterrupt raised wherever the
    # code happens to be: it cancels the run, which shuts the manager down (running jobs
    # killed, every task CANCELLED) through the usual path.
    with trio.open_signal_receiver(signal.SIGINT) as ctrl_c:
        async with trio.open_nursery() as top:

            async def on_ctrl_c() -> None:
                nonlocal interrupted
                async for _ in ctrl_c:
                    interrupted = True
                    top.cancel_scope.cancel()

            top.start_soon(on_ctrl_c)
            async with tm, tm.open_change_stream() as changes:
                _submit_jobs(tm)
                infos.update({tid: await tm.info(tid) for tid in ids})
                async with _showing(view), trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_half_way, tm, cancelled_by_demo)
                    nursery.start_soon(_follow, changes, infos, view)
                    for tid in ids:
                        await _wait(tm, tid)
                    infos.update({tid: await tm.info(tid) for tid in ids})
                    nursery.cancel_scope.cancel()
            top.cancel_scope.cancel()
    if interrupted:
        # The tasks the shutdown cancelled (none if Ctrl-C came before the jobs were submitted).
        ended = [i for i in tm.list_tasks() if i.status is TaskStatus.CANCELLED and i.task_id not in cancelled_by_demo]
        killed = sum(i.started_at is not None for i in ended)
        dropped = len(ended) - killed
        line = f"Interrupted: {killed} running jobs and {dropped} queued ones were cancelled; no worker is left."
        await _call(lambda: view.print(line))
        return EXIT_INTERRUPTED
    final = [infos[tid] for tid in ids]
    await _call(lambda: view.summary(final))
    counts: dict[str, int] = {}
    for info in final:
        counts[info.status.value] = counts.get(info.status.value, 0) + 1
    total = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = ["", f"{total} in {time.monotonic() - t0:.1f}s"]
    wrong = [job.task_id for job, info in zip(_JOBS, final, strict=True) if info.status is not job.expected]
    if wrong:
        lines.append(f"unexpected outcome for: {', '.join(wrong)}")
    await _call(lambda: view.print("\n".join(lines)))
    return 1 if wrong else 0


async def _wait(tm: TaskManager, tid: str) -> None:
    try:
        await tm.result(tid)
    except Exception:
        pass  # the summary reports how each task ended


async def _cancel_half_way(tm: TaskManager, cancelled: set[str]) -> None:
    task_id, at = _CANCEL_AT
    async for info in tm.watch(task_id):
        if (info.progress or 0) >= at:
            if await tm.cancel(task_id):
                cancelled.add(task_id)
            return


async def _follow(changes: AsyncIterator[TaskInfo], infos: dict[str, TaskInfo], view: _View) -> None:
    """Keep ``infos`` current and redraw ten times a second (rich measures the terminal at each redraw)."""
    while True:
        with trio.move_on_after(0.1) as tick:
            async for info in changes:
                infos[info.task_id] = info
        await _call(view.refresh)
        if not tick.cancelled_caught:  # the stream ended: the manager is shutting down
            return


def _worker_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of worker processes, got {text!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_WORKERS}, got {value}")
    return value


_DESCRIPTION = "genro-tasks: long-running background jobs for trio, in worker processes."
_DEMO_DESCRIPTION = """\
Run eight jobs on a TaskManager and show them live: progress bars move,
queued jobs stay PENDING until a worker starts them, one job is cancelled
half way (its worker is killed), one segfaults its worker (the others carry
on), one hits its timeout, and a summary closes the run (about 10 seconds).

On a terminal, with rich installed (pip install 'genro-tasks[demo]'), a live
table is redrawn in place; otherwise plain lines are printed. Ctrl-C cancels
the running jobs and exits with status 130."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m genro_tasks``."""
    parser = argparse.ArgumentParser(prog="python -m genro_tasks", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the live demo (about 10 seconds)",
        description=_DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--workers",
        type=_worker_count,
        default=3,
        metavar="N",
        help=f"worker processes, 1 to {MAX_WORKERS} (default 3)",
    )
    mode = demo.add_mutually_exclusive_group()
    mode.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    mode.add_argument("--live", action="store_true", help="the live table even when stdout is not a terminal")
    from ._cli import add_commands  # the store commands: ls, show, watch, cancel

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m genro_tasks``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command != "demo":
        from ._cli import run_command

        return run_command(args)
    live = True if args.live else False if args.plain else None
    try:
        return trio.run(lambda: run_demo(sys.stdout, workers=args.workers, live=live))
    except KeyboardInterrupt:  # Ctrl-C before the demo's jobs were submitted, or after they ended
        sys.stderr.write("Interrupted.\n")
        return EXIT_INTERRUPTED
