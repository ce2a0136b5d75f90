"""``python -m genro_tasks ls | groups | show | watch | cancel --store PATH``: a store from the shell.

Every command opens the store as a client (a TaskManager that runs no
worker and claims nothing), so it works the same whether the application
that owns the store is running or stopped: ``ls`` and ``show`` read it,
``watch`` follows it live, ``cancel`` asks the owner of a running task to
kill it (or cancels a queued task itself). Output is laid out for a
terminal, or one JSON document (``ls``, ``show``, ``cancel``) or one JSON
line per change (``watch``) with ``--json``.

Exit statuses: 0 success; 1 ``cancel`` of a task already finished, or
``watch ID`` of a task that ended FAILED or CANCELLED; 2 bad usage or an
unknown task id; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import os
import shutil
import sys
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

import trio

from ._manager import TaskManager
from ._store._liveness import owner_of
from ._task import TaskInfo, TaskStatus
from .asgi._serialize import info_to_json

#: The environment variable that names the store when ``--store`` is not given.
STORE_ENV = "GENRO_TASKS_STORE"
EXIT_OK = 0
EXIT_NOT_DONE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

COMMANDS = ("ls", "groups", "show", "watch", "cancel")


class UsageError(Exception):
    """A mistake on the command line: printed without a traceback, exit status 2."""


def add_commands(sub: Any) -> None:
    """Add the store commands to the ``python -m genro_tasks`` subparsers."""
    store_help = f"the task store (an SQLite file); default: ${STORE_ENV}"

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--store", metavar="PATH", help=store_help)
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    ls = sub.add_parser("ls", help="list the tasks of a store", description="List the tasks of a store, oldest first.")
    common(ls)
    ls.add_argument("--status", choices=[s.value for s in TaskStatus], help="only tasks with this status")
    ls.add_argument("--limit", type=_positive, default=None, metavar="N", help="only the newest N tasks")
    ls.add_argument("--group", metavar="NAME", help="only the tasks of this group")

    groups = sub.add_parser(
        "groups",
        help="list the groups of a store",
        description="List the groups of a store (tm.map batches, group= tasks): counts, progress, time left.",
    )
    common(groups)

    show = sub.add_parser("show", help="everything about one task", description="Everything a store knows of one task.")
    common(show)
    id_help = "the task's id; one that starts with '-' goes after '--' (show -- -x)"
    show.add_argument("task_id", metavar="ID", help=id_help)

    watch = sub.add_parser(
        "watch",
        help="follow one task, or every task, live",
        description="Print a line per change: of one task until it ends, or of every task until Ctrl-C.",
    )
    common(watch)
    watch.add_argument("task_id", nargs="?", metavar="ID", help=id_help + "; none: every task")

    cancel = sub.add_parser(
        "cancel",
        help="cancel a queued or running task",
        description="Cancel a task: a running one's worker is killed (after --grace seconds, if given).",
    )
    common(cancel)
    cancel.add_argument("task_id", metavar="ID", help=id_help)
    cancel.add_argument("--grace", type=_seconds, default=None, metavar="S", help="let the job stop by itself for S s")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number >= 0), not {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds (a finite number >= 0), not {text!r}")
    return value


#: Invisible characters that reorder the text around them ("Trojan source"); shown escaped.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _shown(text: str, *, lines: bool = False) -> str:
    """``text`` for a terminal: control and bidi characters escaped (``\\x1b``, ``\\n``).

    Task ids, metadata, messages and errors come from users and jobs: an escape
    sequence in them must not drive the operator's terminal, and a newline must
    not split a row. ``lines=True`` keeps newlines (a traceback).
    """
    if text.isprintable():
        return text
    out = []
    for char in text:
        if (char == "\n" and lines) or not (unicodedata.category(char) == "Cc" or char in _BIDI):
            out.append(char)
        else:
            out.append(repr(char)[1:-1])  # \x1b, \n, \u202e
    return "".join(out)


def _cells(text: str) -> int:
    """Columns ``text`` takes on a terminal: 2 per wide character (CJK), 0 per combining mark."""
    if text.isascii():
        return len(text)
    return sum(_char_cells(char) for char in text)


def _char_cells(char: str) -> int:
    if unicodedata.category(char) in ("Mn", "Me", "Cf"):  # combining marks, zero-width format characters
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _fit(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` columns, or cut to ``width - 1`` and "…"."""
    cells = _cells(text)
    if cells <= width:
        return text + " " * (width - cells)
    kept, used = [], 0
    for char in text:
        used += _char_cells(char)
        if used > width - 1:
            break
        kept.append(char)
    cut = "".join(kept) + "…"
    return cut + " " * (width - _cells(cut))


def run_command(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run one store command; return the exit status."""
    for stream in (out, err):  # text this terminal cannot encode is shown escaped, never a traceback
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    store = args.store or os.environ.get(STORE_ENV)
    if not store:
        err.write(f"error: say which store: --store PATH, or set {STORE_ENV}\n")
        return EXIT_USAGE
    if not os.path.exists(store):
        err.write(f"error: no task store at {store!r} (a store is created by the application that uses it)\n")
        return EXIT_USAGE
    if os.path.isfile(store) and os.path.getsize(store) == 0:
        err.write(f"error: {store!r} is an empty file, not a task store (reading never creates a store)\n")
        return EXIT_USAGE
    commands: dict[str, Callable[[str, argparse.Namespace, TextIO], Awaitable[int]]] = {
        "ls": _ls,
        "groups": _groups,
        "show": _show,
        "watch": _watch,
        "cancel": functools.partial(_cancel, err=err),  # it may say on ``err`` what it waits for
    }
    command = commands[args.command]
    try:
        return trio.run(command, store, args, out)
    except KeyboardInterrupt:
        err.write("Interrupted.\n")
        return EXIT_INTERRUPTED
    except UsageError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_USAGE
    except BrokenPipeError:  # the reader went away (``ls | head``): stop quietly, as shell tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not complain again
        return EXIT_OK


@asynccontextmanager
async def _client(store: str) -> AsyncIterator[TaskManager]:
    """A TaskManager on ``store`` that runs nothing: it reads, watches and cancels.

    It applies no retention of its own: a manager prunes the file by its
    limits when it opens it, and the defaults (``max_finished=10_000``) would
    delete finished tasks an application configured to keep.
    """
    tm = TaskManager(max_workers=0, store=store, max_finished=sys.maxsize)
    try:
        await tm.startup()
    except RuntimeError as exc:  # the file is not a store, cannot be opened, or is too new
        raise UsageError(str(exc)) from None
    try:
        yield tm
    finally:
        with trio.CancelScope(shield=True):
            await tm.shutdown(wait=False)


async def _info(tm: TaskManager, task_id: str) -> TaskInfo:
    try:
        return await tm.info(task_id)
    except KeyError:
        raise UsageError(f"no task {task_id!r} in this store") from None


async def _ls(store: str, args: argparse.Namespace, out: TextIO) -> int:
    async with _client(store) as tm:
        infos = tm.list_tasks(args.status)
    if args.group is not None:
        infos = [info for info in infos if info.group == args.group]
    if args.limit is not None:
        infos = infos[-args.limit :]
    if args.json:
        json.dump([info_to_json(info) for info in infos], out, indent=1)
        out.write("\n")
        return EXIT_OK
    if not infos:
        out.write("no tasks\n")
        return EXIT_OK
    now = datetime.now(UTC)
    rows: list[tuple[str, ...]] = [("ID", "STATUS", "PROGRESS", "AGE", "RUN", "NAME", "ERROR / MESSAGE")]
    rows += [_row(info, now) for info in infos]
    _print_table(rows, out)
    return EXIT_OK


async def _groups(store: str, args: argparse.Namespace, out: TextIO) -> int:
    async with _client(store) as tm:
        groups = tm.groups()
    if args.json:
        json.dump([dataclasses.asdict(g) for g in groups], out, indent=1)
        out.write("\n")
        return EXIT_OK
    if not groups:
        out.write("no groups\n")
        return EXIT_OK
    rows: list[tuple[str, ...]] = [
        ("GROUP", "TOTAL", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "PROGRESS", "LEFT")
    ]
    for g in groups:
        left = "" if g.eta is None else _duration(g.eta)
        counts = (g.total, g.pending, g.running, g.completed, g.failed, g.cancelled)
        rows.append((g.group, *(str(c) for c in counts), f"{g.progress:4.0%}", left))
    _print_table(rows, out)
    return EXIT_OK


def _row(info: TaskInfo, now: datetime) -> tuple[str, ...]:
    progress = "" if info.progress is None else f"{info.progress:4.0%}"
    run = ""
    if info.started_at is not None:
        run = _duration(((info.completed_at or now) - info.started_at).total_seconds())
    note = (info.error or info.progress_message or "").split("\n", 1)[0]
    return (
        info.task_id,
        info.status.value,
        progress,
        _duration((now - info.created_at).total_seconds()),
        run,
        info.name,
        note,
    )


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


#: On a terminal, the narrowest a column is cut to (with "…") so that a row fits its width.
_NARROWEST = 12


def _print_table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    """Aligned columns, fitted to a terminal's width: the widest columns (a very long id) are
    cut first, down to :data:`_NARROWEST`, then the last column."""
    rows = [tuple(_shown(cell) for cell in row) for row in rows]
    widths = [max(_cells(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    width = shutil.get_terminal_size((120, 24)).columns
    if out.isatty():
        room = width - 2 * len(widths) - _NARROWEST  # what the columns but the last may take
        while sum(widths) > room and max(widths) > _NARROWEST:
            widest = widths.index(max(widths))
            widths[widest] = max(_NARROWEST, widths[widest] - (sum(widths) - room))
    for row in rows:
        head = "  ".join(_fit(cell, w) for cell, w in zip(row, widths, strict=False))
        line = f"{head}  {row[-1]}".rstrip()
        if out.isatty() and _cells(line) > width:
            line = _fit(line, width).rstrip()
        out.write(line + "\n")


async def _show(store: str, args: argparse.Namespace, out: TextIO) -> int:
    async with _client(store) as tm:
        info = await _info(tm, args.task_id)
    data = info_to_json(info, tracebacks=True)
    if args.json:
        json.dump(data, out, indent=1)
        out.write("\n")
        return EXIT_OK
    traceback = data.pop("traceback", None)
    metadata = data.pop("metadata", None)
    for key, value in data.items():
        if value is not None:
            out.write(f"{key + ':':<18}{_shown(str(value), lines=key == 'error')}\n")
    if metadata:
        out.write(f"{'metadata:':<18}{_shown(json.dumps(metadata, ensure_ascii=False))}\n")
    if traceback:
        out.write("traceback:\n" + _shown(traceback.rstrip("\n"), lines=True) + "\n")
    return EXIT_OK


def _change_line(info: TaskInfo) -> str:
    parts = [info.task_id, info.status.value]
    if info.progress is not None:
        parts.append(f"{info.progress:.0%}")
    if info.progress_message:
        parts.append(info.progress_message)
    if info.error:
        parts.append(info.error.split("\n", 1)[0])
    return "  ".join(parts)


def _emit(info: TaskInfo, args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        out.write(json.dumps(info_to_json(info)) + "\n")
    else:
        out.write(f"{datetime.now().strftime('%H:%M:%S')}  {_shown(_change_line(info))}\n")
    out.flush()


async def _watch(store: str, args: argparse.Namespace, out: TextIO) -> int:
    async with _client(store) as tm:
        if args.task_id is None:
            for info in tm.list_tasks():
                if not info.status.is_terminal:
                    _emit(info, args, out)
            async with tm.open_change_stream() as stream:
                async for info in stream:
                    _emit(info, args, out)
            return EXIT_OK
        await _info(tm, args.task_id)
        watcher = tm.watch(args.task_id)
        last: TaskInfo | None = None
        async for info in watcher:  # the current snapshot first, then each change, ending at the last
            _emit(info, args, out)
            last = info
        return EXIT_OK if last is not None and last.status is TaskStatus.COMPLETED else EXIT_NOT_DONE


#: Seconds ``cancel`` waits before it says what it waits for.
EXPLAIN_AFTER = 1.0


async def _explain_wait(store: str, task_id: str, grace: float | None, err: TextIO) -> None:
    """``cancel`` of a task another process runs waits for that process: after a while, say so on ``err``."""
    await trio.sleep(EXPLAIN_AFTER + (grace or 0.0))  # a graceful cancel may take its grace
    try:
        # abandoned if the cancel ends first: a read of the file, nothing to undo
        owner = await trio.to_thread.run_sync(owner_of, store, task_id, abandon_on_cancel=True)
    except Exception:  # only an explanation: never let it break the cancel
        owner = None
    if owner is None:
        return
    pid, doing = owner
    why = {
        "stopped": "it is stopped (SIGSTOP or a debugger): the task is cancelled when it resumes (kill -CONT)",
        "running": "it has not acted on the request yet",
        "on another machine": "it runs on another machine",
    }[doing]
    err.write(
        f"waiting for pid {pid}, the process running task {task_id!r}, to kill its job: {why}. "
        "Ctrl-C stops waiting; the cancel request stays.\n"
    )
    err.flush()


async def _cancel(store: str, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async with _client(store) as tm:
        await _info(tm, args.task_id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_explain_wait, store, args.task_id, args.grace, err)
            cancelled = await tm.cancel(args.task_id, grace=args.grace)
            nursery.cancel_scope.cancel()
        info = await tm.info(args.task_id)
    if args.json:
        json.dump({"cancelled": cancelled, "task": info_to_json(info)}, out, indent=1)
        out.write("\n")
    elif cancelled:
        out.write(f"{_shown(info.task_id)}: cancelled\n")
    else:
        out.write(f"{_shown(info.task_id)}: not cancelled, already {info.status.value}\n")
    return EXIT_OK if cancelled else EXIT_NOT_DONE
