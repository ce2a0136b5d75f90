"""Run many jobs with ``tm.map`` and a live aggregate progress bar; Ctrl-C stops cleanly.

    python examples/many_jobs.py [ITEMS] [--seconds S] [--workers N] [--plain]

Each item is a small job that reports its own progress. The bar shows the
batch's aggregate progress (``tm.group_info``: finished items count 1, running
ones their reported fraction), the rate and the time left. It uses rich when
installed (``pip install 'genro-tasks[demo]'``) and fits the terminal; with
``--plain`` or without rich it prints plain lines. Ctrl-C leaves the ``async
with tm.map(...)`` block, which kills the batch's running and queued jobs
before the summary is printed; the script then exits with status 130.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import time
from typing import Any

import trio

from genro_tasks import GroupInfo, TaskManager, report_progress


def work(item: int, seconds: float) -> int:
    """One item: ``seconds`` of work in ten steps, reporting progress after each."""
    for step in range(1, 11):
        time.sleep(seconds / 10)
        report_progress(step / 10)
    return item * item


def describe(info: GroupInfo, items: int, elapsed: float) -> tuple[float, str]:
    """The batch's progress in items (partial ones included) and a one-line summary.

    ``tm.map`` submits lazily, so the group holds only the items submitted so
    far: progress and time left are computed against every item of the input.
    """
    done = info.progress * info.total  # finished items count 1, running ones their fraction
    rate = info.finished / elapsed if elapsed > 0 else 0.0
    eta = f"{(items - done) * elapsed / done:.0f}s" if done > 0 else "?"
    return (
        done,
        f"{info.finished}/{items} done · {info.running} running · {info.failed} failed · {rate:.1f}/s · eta {eta}",
    )


class PlainBar:
    """Fallback display: one line rewritten in place on a terminal, else a line a second."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stdout.isatty()
        self.last = 0.0

    def __enter__(self) -> PlainBar:
        return self

    def show(self, info: GroupInfo, elapsed: float) -> None:
        done, text = describe(info, self.total, elapsed)
        line = f"{done / self.total:6.1%}  {text}"
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            print("\r" + line[:width].ljust(width), end="", flush=True)
        elif time.monotonic() - self.last >= 1.0:
            self.last = time.monotonic()
            print(line, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self.tty:
            print()


class RichBar:
    """rich's progress bar (expands to the terminal's width)."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=None),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            expand=True,
        )
        self.task = self.progress.add_task(f"{total} items", total=total, detail="")

    def __enter__(self) -> RichBar:
        self.progress.start()
        return self

    def show(self, info: GroupInfo, elapsed: float) -> None:
        done, text = describe(info, int(self.progress.tasks[0].total or 0), elapsed)
        self.progress.update(self.task, completed=done, detail=text)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def make_bar(total: int, plain: bool) -> Any:
    if not plain:
        try:
            return RichBar(total)
        except ImportError:
            pass
    return PlainBar(total)


async def main(items: int, seconds: float, workers: int, plain: bool) -> int:
    started = time.monotonic()
    total = 0
    async with TaskManager(max_workers=workers) as tm:
        it = tm.map(functools.partial(work, seconds=seconds), range(items))
        interrupted = False
        try:
            with make_bar(items, plain) as bar:
                async with it:  # leaving it, however, kills what is left of the batch

                    async def refresh() -> None:
                        while True:
                            bar.show(tm.group_info(it.group), time.monotonic() - started)
                            await trio.sleep(0.1)

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(refresh)
                        print(f"running {items} items on {workers} workers (Ctrl-C stops)", flush=True)
                        async for value in it:
                            total += value
                        nursery.cancel_scope.cancel()
                    bar.show(tm.group_info(it.group), time.monotonic() - started)
        except* KeyboardInterrupt:  # trio delivers Ctrl-C here (wrapped by the nursery)
            interrupted = True
        if interrupted:  # the batch was killed when its ``async with`` block was left
            print(f"interrupted: {summary(tm.group_info(it.group))}", flush=True)
            return 130
        print(f"done in {time.monotonic() - started:.1f}s: {summary(tm.group_info(it.group))}; sum {total}")
    return 0


def summary(info: GroupInfo) -> str:
    return (
        f"completed {info.completed}, failed {info.failed}, cancelled {info.cancelled}, "
        f"running {info.running}, pending {info.pending}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="?", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=0.2, help="work per item (default 0.2)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plain", action="store_true", help="plain lines, even if rich is installed")
    args = parser.parse_args()
    try:
        sys.exit(trio.run(main, args.items, args.seconds, args.workers, args.plain))
    except KeyboardInterrupt:  # Ctrl-C before the batch started, or after it ended
        sys.exit(130)
