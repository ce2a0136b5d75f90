"""The demo's live table, rendered by rich at many widths (no processes needed)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console

from genro_tasks import TaskInfo, TaskStatus
from genro_tasks._demo_rich import RichView, TaskTable
from genro_tasks._demo_text import shorten


def _info(task_id: str, status: TaskStatus, progress: float | None, message: str, error: str | None = None) -> TaskInfo:
    now = datetime.now(UTC)
    started = None if status is TaskStatus.PENDING else now
    done = now if status.is_terminal else None
    return TaskInfo(
        task_id=task_id,
        status=status,
        created_at=now,
        started_at=started,
        completed_at=done,
        progress=progress,
        progress_message=message,
        error=error,
        worker_pid=None if started is None else 4242,
    )


INFOS = {
    "export-report": _info("export-report", TaskStatus.COMPLETED, 1.0, "exported rows x600: 20/20"),
    "native-plugin": _info(
        "native-plugin",
        TaskStatus.FAILED,
        1.0,
        "step 10/10",
        "WorkerCrashed: Worker process 4242 died while running task 'native-plugin': killed by SIGSEGV (signal 11)",
    ),
    "build-thumbnails": _info("build-thumbnails", TaskStatus.RUNNING, 0.997, "thumbnail 299/300 " * 5),
    "sync-mailbox": _info("sync-mailbox", TaskStatus.PENDING, None, ""),
}


@pytest.mark.parametrize("width", [24, 40, 60, 80, 100, 140, 200])
def test_table_fits_any_width(width: int) -> None:
    console = Console(width=width, record=True, force_terminal=True, color_system=None)
    console.print(TaskTable(list(INFOS), INFOS, lambda: "a title that is longer than the narrowest width"))
    lines = console.export_text().splitlines()
    assert len(lines) == 2 + len(INFOS)  # nothing wrapped
    assert all(len(line) < width for line in lines), lines  # the last column stays free


def test_only_a_completed_bar_is_full() -> None:
    console = Console(width=100, record=True, force_terminal=True, color_system=None)
    console.print(TaskTable(list(INFOS), INFOS, lambda: "title"))
    rows = {line.split()[0]: line for line in console.export_text().splitlines()[2:]}
    assert "░" not in rows["export-report"]
    assert "░" in rows["native-plugin"]  # it reported 100% and then crashed: not drawn as done
    assert "░" in rows["build-thumbnails"]


def test_shorten_cuts_at_a_word() -> None:
    assert shorten("cancelled by the caller; worker 12 was killed", 22) == "cancelled by the…"
    assert shorten("short", 22) == "short"
    assert shorten("averyveryverylongword", 10) == "averyvery…"
    assert shorten("a b", 0) == ""


@pytest.mark.parametrize("width", [40, 59, 60, 79, 80, 120])
def test_summary_fits_and_never_cuts_a_word(width: int) -> None:
    out = io.StringIO()
    view = RichView(out, TaskTable(list(INFOS), INFOS, lambda: "title"), force_terminal=False, width=width)
    view.summary(list(INFOS.values()))
    text = out.getvalue()
    assert all(len(line) < width for line in text.splitlines()), text
    words = " ".join(info.error or info.progress_message or "" for info in INFOS.values()).split()
    assert all(word in text for word in words if len(word) < 20), text
