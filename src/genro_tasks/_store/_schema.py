"""The SQLite schema of a shared task store, and how it grows.

Tables:

* ``meta``: ``schema_version`` and ``rev``, the revision counter. Every
  write transaction takes the next revision and stamps it on every row it
  touches, so a process catches up by reading the rows above the last
  revision it saw (and the ``gone`` rows above it, for deletions).
* ``tasks``: one row per task, everything a :class:`~genro_tasks.TaskInfo`
  shows plus who owns it (``owner``: the process that claimed it), a
  cancel request written by another process, and the pickled call
  (``payload``) until a worker starts it. ``n`` (the rowid) grows with every
  insert: a process writes its own rows by ``n``, so a batch touches a few
  neighbouring pages instead of one random page per task (task ids are
  random UUIDs: only their unique index is written at random).
* ``results``: the pickled value (COMPLETED) or error (FAILED) of a task, by ``n``.
  Never read with the rows: listing stays cheap.
* ``gone``: tombstones of deleted tasks, so every process forgets them too
  (dropped once every registered process has read past them).
* ``processes``: the processes using the store, for liveness (pid, the
  pid's start time, machine, heartbeat).

A later version adds a column with :func:`ensure_column` in a new entry of
:data:`MIGRATIONS`; a database written by a newer version is refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

#: Columns read into a process's mirror, in this order (see ``_thread.Row``).
TASK_COLUMNS = (
    "id, rev, status, owner, name, priority, created, started, completed, timeout, memory_limit, "
    "error, traceback, progress, progress_message, worker_pid, metadata, cancel_req, cancel_grace, requeues, "
    "grp, attempt, prev_errors"
)

_V1 = """
CREATE TABLE IF NOT EXISTS tasks (
    n INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    rev INTEGER NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    name TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    completed REAL,
    timeout REAL,
    memory_limit INTEGER,
    error TEXT,
    traceback TEXT,
    progress REAL,
    progress_message TEXT,
    worker_pid INTEGER,
    metadata BLOB,
    cancel_req INTEGER NOT NULL DEFAULT 0,
    cancel_grace REAL,
    requeues INTEGER NOT NULL DEFAULT 0,
    payload BLOB
);
CREATE INDEX IF NOT EXISTS tasks_rev ON tasks(rev);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks(priority DESC, created)
    WHERE status = 'pending' AND owner IS NULL;
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks(completed) WHERE completed IS NOT NULL;
CREATE TABLE IF NOT EXISTS results (n INTEGER PRIMARY KEY, kind TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS gone (id TEXT NOT NULL, rev INTEGER NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS gone_rev ON gone(rev);
CREATE TABLE IF NOT EXISTS processes (
    owner TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    pid_start INTEGER,
    machine TEXT NOT NULL,
    heartbeat REAL NOT NULL,
    started REAL NOT NULL,
    seen INTEGER NOT NULL DEFAULT 0
);
"""


def _v1(conn: sqlite3.Connection) -> None:
    for statement in _V1.split(";"):  # not executescript(): it would commit our transaction
        if statement.strip():
            conn.execute(statement)


def ensure_column(conn: sqlite3.Connection, table: str, name: str, declaration: str) -> None:
    """Add column ``name`` to ``table`` unless it exists (for migrations).

    ``declaration`` is the column's type and default, e.g.
    ``"TEXT"`` or ``"INTEGER NOT NULL DEFAULT 1"``; then add the column to
    :data:`TASK_COLUMNS` if the mirror should see it.
    """
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    if name not in have:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")


def _v2(conn: sqlite3.Connection) -> None:
    """Groups and attempts (``tm.map``, ``group=``, retries, requeue).

    ``grp``: the task's group; ``attempt``: 1, 2, ... (each retry or requeue
    starts the next); ``prev_errors``: how the earlier attempts ended (a JSON
    list); ``retries_left``; ``options``: the pickled TaskOptions of a task
    with a retry policy, so whichever process claims it retries it the same way.
    """
    ensure_column(conn, "tasks", "grp", "TEXT")
    ensure_column(conn, "tasks", "attempt", "INTEGER NOT NULL DEFAULT 1")
    ensure_column(conn, "tasks", "prev_errors", "TEXT")
    ensure_column(conn, "tasks", "retries_left", "INTEGER NOT NULL DEFAULT 0")
    ensure_column(conn, "tasks", "options", "BLOB")
    conn.execute("CREATE INDEX IF NOT EXISTS tasks_grp ON tasks(grp) WHERE grp IS NOT NULL")


#: ``MIGRATIONS[n]`` brings a database from version ``n`` to ``n + 1``.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2]
SCHEMA_VERSION = len(MIGRATIONS)


def refuse_foreign(conn: sqlite3.Connection, path: str) -> None:
    """Raise unless the database is empty (a new store) or a task store: another program's is never written to.

    Called before anything touches the file (even its journal mode), so a
    store path that names some other application's database leaves it as it was.
    """
    tables = [
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")
    ]
    if not tables:
        return
    if "meta" in tables and "tasks" in tables:
        try:
            if conn.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone():
                return
        except sqlite3.OperationalError:  # a table named meta, but not ours
            pass
    shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    raise RuntimeError(
        f"{path!r} is an SQLite database but not a task store (its tables: {shown}); "
        "name a new file for the store, or a store a TaskManager created"
    )


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Create or upgrade the schema, in one immediate transaction (another process may race us)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"task store {path!r} has schema version {version}, newer than this genro_tasks "
                f"understands ({SCHEMA_VERSION}); upgrade genro_tasks in this process, or use another file"
            )
        for step in MIGRATIONS[version:]:
            step(conn)
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('rev', 0)")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
