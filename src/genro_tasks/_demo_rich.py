"""The demo's live view, drawn by rich (the optional ``demo`` extra).

rich's ``Live`` redraws the table in place and measures the terminal at every
refresh, so the table is laid out again for the current width: columns shrink,
messages are shortened at a word, and nothing ever wraps (a wrapped line would
throw the in-place redraw off).
"""

from __future__ import annotations

import os
import sys
import termios
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._demo_text import detail, elapsed, percent, shorten, wrap
from ._task import TaskInfo, TaskStatus

_STYLES = {
    TaskStatus.PENDING: "dim",
    TaskStatus.RUNNING: "cyan",
    TaskStatus.COMPLETED: "green",
    TaskStatus.FAILED: "bold red",
    TaskStatus.CANCELLED: "yellow",
}
_PCT = 4  # "100%"
_STATUS = 9  # "COMPLETED"
_TIME = 6  # "123.4s"


def _columns(width: int, longest_id: int) -> tuple[int, int, int, int]:
    """Widths of (task id, bar, time, detail) for a table ``width`` columns wide.

    A zero width drops that column: detail goes first, then time, then the bar.
    Every row then fits in ``width`` (one space between columns).
    """
    name = max(4, min(longest_id, width - _PCT - _STATUS - 2))
    rest = width - name - _PCT - _STATUS - 2  # room for bar, time, detail and their spaces
    if rest >= 8 + 1 + _TIME + 1 + 12:
        bar = max(8, min(30, (rest - _TIME - 2) // 4))
        return name, bar, _TIME, rest - bar - _TIME - 3
    if rest >= 4 + 1 + _TIME + 1:
        return name, rest - _TIME - 2, _TIME, 0
    if rest >= 4:
        return name, rest - 1, 0, 0
    return name, 0, 0, 0


def _bar(info: TaskInfo, width: int) -> Text:
    """A progress bar in the status colour; only a COMPLETED task's is ever full."""
    fraction = min(1.0, max(0.0, info.progress or 0.0))
    filled = round(fraction * width)
    if info.status is not TaskStatus.COMPLETED and filled == width > 0:
        filled -= 1  # a job that reported 100% and then crashed (or has not returned yet) is not done
    bar = Text("█" * filled, style=_STYLES[info.status])
    bar.append("░" * (width - filled), style="dim")
    return bar


class TaskTable:
    """A rich renderable: a title line, a column header and one row per task.

    It is laid out anew at every render, for the width rich gives it.
    """

    def __init__(self, ids: Sequence[str], infos: Mapping[str, TaskInfo], title: Callable[[], str]) -> None:
        self.ids = ids
        self.infos = infos
        self.title = title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # One column short of the terminal: a row that fills the last column leaves some
        # terminals' cursor waiting to wrap, which the next redraw would miscount.
        width = max(1, options.max_width - 1)
        yield Text(shorten(self.title(), width), style="bold", no_wrap=True, overflow="crop")
        name_w, bar_w, time_w, detail_w = _columns(width, max(len(t) for t in self.ids))
        grid = Table.grid(padding=(0, 1, 0, 0), pad_edge=False)
        grid.add_column(width=name_w, no_wrap=True, overflow="crop")
        if bar_w:
            grid.add_column(width=bar_w, no_wrap=True, overflow="crop")
        grid.add_column(width=_PCT, no_wrap=True, justify="right")
        grid.add_column(width=_STATUS, no_wrap=True)
        if time_w:
            grid.add_column(width=time_w, no_wrap=True, justify="right")
        if detail_w:
            grid.add_column(width=detail_w, no_wrap=True, overflow="crop")

        def row(cells: list[tuple[Text | str, int]]) -> list[Text | str]:
            return [cell for cell, w in cells if w]

        header = "bold underline"
        grid.add_row(
            *row(
                [
                    (Text("task", style=header), name_w),
                    (Text("progress", style=header), bar_w),
                    (Text("%", style=header), _PCT),
                    (Text("status", style=header), _STATUS),
                    (Text("time", style=header), time_w),
                    (Text("detail", style=header), detail_w),
                ]
            )
        )
        for tid in self.ids:
            info = self.infos[tid]
            style = _STYLES[info.status]
            grid.add_row(
                *row(
                    [
                        (shorten(tid, name_w), name_w),
                        (_bar(info, bar_w), bar_w),
                        (percent(info), _PCT),
                        (Text(info.status.value.upper(), style=style), _STATUS),
                        (elapsed(info), time_w),
                        (Text(shorten(detail(info), detail_w), style=style), detail_w),
                    ]
                )
            )
        yield grid


class RichView:
    """The live table on a terminal; every call writes, so the caller runs them off the event loop.

    rich lays the table out for the terminal's width at every refresh. When the
    width changes, the terminal may already have re-wrapped the rows drawn
    before, so moving the cursor up over them would no longer land on the
    table: the screen is cleared and everything drawn again from the top.
    """

    def __init__(self, out: TextIO, table: TaskTable, *, force_terminal: bool, width: int | None = None) -> None:
        self.console = Console(
            file=out, force_terminal=force_terminal or None, width=width, highlight=False, emoji=False
        )
        self.table = table
        self.printed: list[str] = []  # what was printed above the table, to draw again after a resize
        self.live = self._live()
        self.width = 0
        self.saved_tty: list[Any] | None = None

    def _live(self) -> Live:
        return Live(
            self.table,
            console=self.console,
            auto_refresh=False,  # refreshed on the demo's own schedule: no rich thread
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def print(self, text: str) -> None:
        if not self.live.is_started:
            self.printed.append(text)
        self.console.print(text, markup=False, overflow="fold")

    def start(self) -> None:
        self.width = self.console.width
        self._echo(False)
        self.live.start(refresh=True)

    def refresh(self) -> None:
        if self.console.width == self.width:
            self.live.refresh()
            return
        self.live.stop()
        self.console.clear()
        for text in self.printed:
            self.console.print(text, markup=False, overflow="fold")
        self.live = self._live()
        self.start()

    def stop(self) -> None:
        self.live.stop()
        self._echo(True)

    def _echo(self, on: bool) -> None:
        """Turn the terminal's echo off while the table is live, and back on.

        Anything echoed (keys typed, the ``^C`` of Ctrl-C) lands after the table and
        can push it down a line, so the next redraw would leave a stray copy above.
        """
        try:
            fd = sys.stdin.fileno()
            if not os.isatty(fd):
                return
            if not on:
                self.saved_tty = termios.tcgetattr(fd)
                quiet = termios.tcgetattr(fd)
                quiet[3] &= ~termios.ECHO
                termios.tcsetattr(fd, termios.TCSANOW, quiet)
            elif self.saved_tty is not None:
                termios.tcsetattr(fd, termios.TCSANOW, self.saved_tty)
                self.saved_tty = None
        except (OSError, ValueError, termios.error):
            pass  # no usable terminal on stdin: nothing to quiet

    def summary(self, infos: Sequence[TaskInfo]) -> None:
        """A table of how each task ended, its outcome wrapped at words.

        Below 60 columns the outcome column would be too narrow for whole words,
        so each outcome goes on its own indented lines under its task instead.
        """
        columns = self.console.width
        width = columns - 1  # as the live table: the last column stays free
        with_outcome = columns >= 60
        with_worker = columns >= 80
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
        table.add_column("task", no_wrap=True, overflow="ellipsis")
        table.add_column("status", no_wrap=True)
        table.add_column("ran", justify="right", no_wrap=True)
        if with_worker:
            table.add_column("worker", justify="right", no_wrap=True)
        if with_outcome:
            table.add_column("outcome", ratio=1)
        for info in infos:
            cells: list[Text | str] = [
                info.task_id,
                Text(info.status.value.upper(), style=_STYLES[info.status]),
                elapsed(info) if info.completed_at else "-",
            ]
            if with_worker:
                cells.append(str(info.worker_pid or "-"))
            if with_outcome:
                cells.append(info.error or info.progress_message or "")
            table.add_row(*cells)
        self.console.print()
        self.console.print(Text("Summary", style="bold"))
        self.console.print(table, width=width)
        if not with_outcome:
            for info in infos:
                outcome = info.error or info.progress_message or ""
                self.console.print(Text(f"{info.task_id}:", style="bold"))
                for line in wrap(outcome, width - 2):
                    self.console.print(Text("  " + line), no_wrap=True, overflow="crop")
