"""Is the process that owns a task still alive? Pids, their start times, and machines."""

from __future__ import annotations

import os
import socket


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:  # pragma: no cover - not Linux
        return ""


#: This machine, as one boot of one host: pids are comparable only within it
#: (another container has another host name, hence other pids).
MACHINE = f"{socket.gethostname()}/{_boot_id()}"


def pid_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, from /proc), or None if no such live process.

    A pid is reused once its process is gone; its start time tells the two apart.
    A zombie counts as gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:  # pragma: no cover - /proc unreadable: assume alive, the lease decides
        return -1
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def owner_alive(pid: int, started: int | None, machine: str) -> bool | None:
    """True/False if this machine can tell whether that process lives; None if it cannot (another machine)."""
    if machine != MACHINE:
        return None
    now = pid_start(pid)
    if now is None:
        return False
    return now == -1 or started is None or now == started


def my_identity() -> tuple[int, int | None]:
    """This process's pid and its start time."""
    pid = os.getpid()
    return pid, pid_start(pid)


def owner_of(path: str, task_id: str) -> tuple[int, str] | None:
    """The pid of the process that owns ``task_id`` in the store at ``path``, and what it is doing (blocking).

    What it is doing: ``"stopped"`` (SIGSTOP, a debugger), ``"running"``, or
    ``"on another machine"``. None if no process owns the task now.
    """
    import contextlib
    import sqlite3
    from pathlib import Path

    uri = Path(path).resolve().as_uri() + "?mode=ro"  # percent-encoded: a '?' or '#' in the path stays in it
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as conn:
        row = conn.execute(
            "SELECT p.pid, p.machine FROM tasks t JOIN processes p ON p.owner = t.owner WHERE t.id = ?", (task_id,)
        ).fetchone()
    if row is None:
        return None
    pid, machine = int(row[0]), str(row[1])
    if machine != MACHINE:
        return pid, "on another machine"
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return pid, "running"
    return pid, "stopped" if state in (b"T", b"t") else "running"
