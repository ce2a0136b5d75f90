"""A shared, durable task store in one SQLite file (``TaskManager(store=...)``).

* :class:`SQLiteStore` (this file): the options, checked at the call.
* :mod:`._registry`: :class:`~._registry.StoreRegistry`, the
  :class:`~genro_tasks._registry.TaskRegistry` a manager uses with a store:
  an in-memory mirror of every task row, claims, cross-process cancel.
* :mod:`._thread`: the writer thread, the only code touching the file.
* :mod:`._schema`: tables, schema version and migrations.
* :mod:`._liveness`: whether the owner of a task is alive (pid, start time, machine).
* :mod:`._client`: the backend of a client-only manager (``max_workers=0``).

A store for several machines (PostgreSQL) would be another registry behind
the same seam; the registry's trio side would stay as it is.
"""

from __future__ import annotations

import os

from .._validate import is_number

_SYNC_MODES = ("NORMAL", "FULL")


class SQLiteStore:
    """Where a TaskManager keeps its tasks so other processes and later runs see them.

    Pass it (or just the path) as ``TaskManager(store=...)``. Every manager
    opened on the same file, in any process of this machine, shares one
    queue and one view of every task; the file keeps finished tasks (with
    their results) and queued ones across restarts. See the README section
    "Several processes and restarts".

    Args:
        path: The SQLite file; created (with its directory's permission) if missing.
            An SQLite database that is not a task store (another program's) is
            refused when the manager starts, and left untouched.
        synchronous: ``"NORMAL"`` (default): a commit survives the crash of
            any process, and a power loss may lose the last commits;
            ``"FULL"``: a commit survives power loss too (each group commit
            then waits for the disk: a few hundred microseconds more).
        busy_timeout: Seconds a write waits for another process's write
            before retrying (it never gives up; a warning is logged).
        poll_interval: Seconds between checks for other processes' changes
            (a cheap ``PRAGMA data_version``): the delay before another
            process's submit, progress or cancel is seen here.
        lease: Seconds without a heartbeat after which a process on another
            machine (whose pid cannot be checked from here) counts as dead.
            On this machine a dead process is noticed by its pid at once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
        poll_interval: float = 0.005,
        lease: float = 10.0,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"SQLiteStore path must be a str or os.PathLike, not {path!r}")
        text = os.fspath(path)
        if not isinstance(text, str) or not text or text == ":memory:":
            raise ValueError(
                f"SQLiteStore path must name a file (several processes share it), not {path!r}; "
                "for a store in this process's memory only, leave store=None"
            )
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNC_MODES:
            raise ValueError(f"SQLiteStore synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        for name, value, low in (
            ("busy_timeout", busy_timeout, 0.0),
            ("poll_interval", poll_interval, 0.0005),
            ("lease", lease, 1.0),
        ):
            if not is_number(value) or not low <= value < float("inf"):
                raise ValueError(f"SQLiteStore {name} must be a number of seconds >= {low:g}, not {value!r}")
        self.path = os.path.abspath(text)
        self.synchronous = synchronous.upper()
        self.busy_timeout = float(busy_timeout)
        self.poll_interval = float(poll_interval)
        self.lease = float(lease)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, synchronous={self.synchronous!r})"


def as_store(store: object) -> SQLiteStore | None:
    """``TaskManager(store=...)``: None, a path, or an SQLiteStore; anything else is refused here."""
    if store is None or isinstance(store, SQLiteStore):
        return store
    if isinstance(store, str | os.PathLike):
        return SQLiteStore(store)
    raise TypeError(
        f"store must be None (tasks in this process's memory), a path to an SQLite file, or an SQLiteStore, "
        f"not {store!r}"
    )


__all__ = ("SQLiteStore", "as_store")
