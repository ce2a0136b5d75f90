"""The store's writer thread: the only code that touches the SQLite file while a manager runs.

The trio side appends operations to :attr:`StoreThread.ops` (a deque: no
lock, no wait) and wakes the thread; it asks for claims beside them
(:meth:`StoreThread.claim`). The thread runs what is pending (up to
``ROUND_OPS`` ops, then every claim asked for) in ONE ``BEGIN IMMEDIATE``
transaction (group commit), then reads what other
processes changed (when ``PRAGMA data_version`` moved), and hands a
:class:`Batch` back to the trio thread with ``TrioToken.run_sync_soon``.
Between batches it polls ``data_version`` every ``poll_interval`` seconds,
beats its heartbeat and checks that the owners of running tasks are alive.

It reads fields of trio-side records (they change only in the trio thread;
reading an attribute is atomic under the GIL) but never changes them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import resource
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any, NamedTuple

from .._task import TaskStatus
from ._liveness import MACHINE, my_identity, owner_alive
from ._schema import TASK_COLUMNS, migrate, refuse_foreign

if TYPE_CHECKING:
    from .._task import TaskRecord
    from . import SQLiteStore

log = logging.getLogger("genro_tasks")

# Operation kinds (first item of each op tuple).
INSERT = 0  # (INSERT, rec, owner | None, payload, pickled metadata | None)
STARTED = 1  # (STARTED, rec)
PROGRESS = 2  # (PROGRESS, rec): coalesced, written at most every PROGRESS_EVERY seconds
FINISH = 3  # (FINISH, rec)
# (4: no op; a claim goes through StoreThread.claim(), beside the ops)
RELEASE = 5  # (RELEASE, task_id): a claimed task not started goes back to the queue
CANCEL = 6  # (CANCEL, task_id, grace): answered with "mine", "asked" or "settled"
DELETE = 7  # (DELETE, ids)
SYNC = 8  # (SYNC,): nothing to write; read the other processes' changes now
STOP = 9  # (STOP,): write what is pending, unregister, close
RESTART = 10  # (RESTART, rec, owner | None): a task's next attempt (a retry here, or a requeue to the queue)

#: Most ops one round takes: a burst of submissions is written in several rounds, so a claim (which
#: each round answers, whatever is queued) never waits for the whole burst to be written.
ROUND_OPS = 512
#: At most one progress write per task per this many seconds.
PROGRESS_EVERY = 0.05
#: How often a process beats its heartbeat and checks the other owners.
HEARTBEAT_EVERY = 1.0
#: Tombstones of deleted tasks are kept this long for processes catching up.
GONE_KEEP = 3600.0
#: Retention runs at most this often (seconds) ...
PRUNE_EVERY = 0.1
#: ... and once this many seconds passed since it last ran, or a batch of finishes came (``StoreThread._prune_batch``).
PRUNE_AT_LEAST = 1.0
#: How often a task whose owner died before starting it goes back to the queue.
MAX_REQUEUES = 3
#: Seconds between attempts to write a round the disk refused (full, or past the file size limit).
RETRY_REFUSED = 0.5
#: How long a stopping writer keeps retrying a refused round before it gives up (and logs what it lost).
STOP_GIVE_UP = 2.0
#: A task's outcome larger than this is left out of a round the disk refused, so the rest can be written.
BIG_OUTCOME = 1 << 20
#: SQLite's primary result codes of a write the disk refused: SQLITE_IOERR, SQLITE_FULL.
_REFUSED_CODES = (10, 13)

_TERMINAL = ("completed", "failed", "cancelled")
_TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
_STATUS_TEXT = {status: status.value for status in TaskStatus}
_STATUS_VALUES = frozenset(_STATUS_TEXT.values())
#: The end columns (after its status) of a task inserted PENDING (see ``StoreThread._insert``).
_PENDING_END = (None, None, None, None, None, None, None)
_LOST = "its TaskManager process (pid {pid}) died while it ran; the job may or may not have finished"
#: SQL for a lost task's error column: ``TaskLost: `` and the text of ``str(TaskLost(id, detail))``.
_LOST_SQL = "'TaskLost: Task ''' || id || ''' was lost: ' || ?"


#: Most host parameters in one statement (SQLite's limit is 32766 since 3.32).
_MAX_VARIABLES = 30000
#: Most rows in one statement of ``StoreThread._many`` (a power of two).
_MAX_CHUNK = 512
#: Most rows of NULLs padding a chunk of ``StoreThread._many`` (each costs about a microsecond; another
#: statement, some thirty).
_MAX_PAD = 32
#: The round's revision, as statements of ``StoreThread._many`` read it (the round took it from ``meta``).
_CURRENT_REV = "(SELECT value FROM meta WHERE key = 'rev')"
#: Statements the connection keeps prepared (``_many`` uses up to ten sizes of each of its few templates).
_CACHED_STATEMENTS = 256


@functools.lru_cache(maxsize=256)
def _placeholders(width: int, count: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return ", ".join([row] * count)


#: The columns an insert always binds, then those it binds only when a row has them (else the SQL default).
_INSERT_ALWAYS = ("n", "id", "owner", "name", "priority", "created", "payload", "status")
_INSERT_OPTIONAL = (
    ("timeout", "NULL"),
    ("memory_limit", "NULL"),
    ("metadata", "NULL"),
    ("grp", "NULL"),
    ("retries_left", "0"),
    ("options", "NULL"),
    ("error", "NULL"),
    ("traceback", "NULL"),
    ("completed", "NULL"),
    ("started", "NULL"),
    ("worker_pid", "NULL"),
    ("progress", "NULL"),
    ("progress_message", "NULL"),
)
#: The same for the end of a task (the columns after ``n``).
_FINISH_ALWAYS = ("status", "completed", "started", "worker_pid")
_FINISH_OPTIONAL = (("error", "NULL"), ("traceback", "NULL"), ("progress", "NULL"), ("progress_message", "NULL"))
#: A row with none of its optional columns.
_BARE = ()


@functools.lru_cache(maxsize=256)
def _insert_sql(present: tuple[bool, ...]) -> str:
    """The insert template (for ``StoreThread._many``) binding the always-columns and the ``present`` optional ones."""
    columns = list(_INSERT_ALWAYS)
    values = [f"column{i}" for i in range(1, len(columns) + 1)]
    k = len(columns)
    for (name, default), here in zip(_INSERT_OPTIONAL, present or (False,) * len(_INSERT_OPTIONAL), strict=True):
        columns.append(name)
        if here:
            k += 1
            values.append(f"column{k}")
        else:
            values.append(default)
    return (
        f"INSERT OR IGNORE INTO tasks ({', '.join(columns)}, rev) SELECT {', '.join(values)}, {{rev}} "
        "FROM (VALUES {values}) WHERE column1 IS NOT NULL"
    )


@functools.lru_cache(maxsize=64)
def _finish_sql(present: tuple[bool, ...]) -> str:
    """The update template writing the end of tasks: the always-columns and the ``present`` optional ones."""
    sets = [f"{name} = v.column{i}" for i, name in enumerate(_FINISH_ALWAYS, 2)]
    k = len(_FINISH_ALWAYS) + 1
    for (name, default), here in zip(_FINISH_OPTIONAL, present or (False,) * len(_FINISH_OPTIONAL), strict=True):
        if here:
            k += 1
            sets.append(f"{name} = v.column{k}")
        else:
            sets.append(f"{name} = {default}")
    return (
        f"UPDATE tasks SET {', '.join(sets)}, cancel_req = 0, payload = NULL, rev = {{rev}} "
        "FROM (VALUES {values}) AS v WHERE tasks.n = v.column1 AND tasks.owner = {owner}"
    )


def _slim(
    always: tuple[Any, ...], optional: tuple[Any, ...], groups: dict[tuple[bool, ...], list[tuple[Any, ...]]]
) -> None:
    """Add a row to ``groups``, by which of its ``optional`` values are set (not None).

    Binding a value costs more than running the statement: a row binds only what it has.
    """
    if optional.count(None) == len(optional):
        present: tuple[bool, ...] = _BARE
        row = always
    else:
        present = tuple([value is not None for value in optional])
        row = always + tuple([value for value in optional if value is not None])
    group = groups.get(present)
    if group is None:
        groups[present] = [row]
    else:
        group.append(row)


class Row(NamedTuple):
    """One task row as the mirror reads it (columns of ``TASK_COLUMNS``)."""

    id: str
    rev: int
    status: str
    owner: str | None
    name: str
    priority: int
    created: float
    started: float | None
    completed: float | None
    timeout: float | None
    memory_limit: int | None
    error: str | None
    traceback: str | None
    progress: float | None
    progress_message: str | None
    worker_pid: int | None
    metadata: bytes | None
    cancel_req: int
    cancel_grace: float | None
    requeues: int
    grp: str | None
    attempt: int
    prev_errors: str | None


@dataclass(slots=True)
class Claimed:
    """A task this process just claimed, with its job."""

    task_id: str
    #: The whole row, only for a task this process's mirror did not know when it was claimed.
    row: Row | None
    requeues: int
    #: The stored job; None for a task this process inserted (its record holds the same job).
    payload: bytes | None
    #: The pickled TaskOptions of a task with a retry policy, and its retries left.
    options: bytes | None = None
    retries_left: int = 0


@dataclass(slots=True)
class Batch:
    """What one round of the thread hands back to trio."""

    #: How many ops (counted from the first) are now processed and committed.
    done: int
    claims: list[tuple[int, list[Claimed]]] = field(default_factory=list)
    #: The round wrote every op handed over before its claims: a short claim proves the queue empty.
    claims_whole: bool = True
    cancels: list[tuple[str, str]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    error: BaseException | None = None
    stopped: bool = False
    #: The round beat the heartbeat (about once a second): a time to look at the tasks held here.
    beat: bool = False
    #: Why the disk refuses this writer's rounds (they are retried); None once a round is written.
    refused: str | None = None


class StoreMoved(RuntimeError):
    """The store file (or its -wal or -shm file) was deleted or replaced under a running manager."""


def disk_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the disk refusing a write (full, file size limit, I/O error): worth retrying."""
    return isinstance(exc, sqlite3.OperationalError) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _REFUSED_CODES


def refusal_text(path: str, exc: BaseException) -> str:
    """What to tell the operator when the disk refuses writes to the store at ``path``: the cause and the fix."""
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    sizes = []
    for name in (path, path + "-wal"):
        try:
            sizes.append(os.path.getsize(name))
        except OSError:
            pass
    try:
        stat = os.statvfs(os.path.dirname(path))
        free: int | None = stat.f_bavail * stat.f_frsize
    except OSError:
        free = None
    if soft != resource.RLIM_INFINITY and sizes and max(sizes) >= soft:
        cause = f"its file reached this process's file size limit (RLIMIT_FSIZE, ulimit -f: {soft} bytes)"
        fix = "raise that limit"
    elif (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == 13 or (free is not None and free < (64 << 20)):
        cause = "the disk holding it is full" + ("" if free is None else f" ({free} bytes free)")
        fix = "free space on that disk"
    else:
        cause = "the disk refused a write"
        fix = "check that disk (dmesg, df)"
    return (
        f"the task store {path!r} cannot be written: {cause} ({type(exc).__name__}: {exc}); {fix}. "
        f"What was written stays; pending writes are kept and retried every {RETRY_REFUSED:g}s, and until one "
        "is written this TaskManager refuses new submissions"
    )


def written_wrong(fix: str = "the file") -> str:
    """The cause and the fix to name when a store holds what this process cannot apply."""
    return f"another program or a newer genro_tasks wrote it. Put {fix} right, or upgrade this process"


def _file_ids(path: str, before: tuple[tuple[int, int] | None, ...] = ()) -> tuple[tuple[int, int] | None, ...]:
    """The (device, inode) of the store file and of its -wal and -shm files (None for a missing one).

    A file that cannot be looked at (its directory made unreadable) keeps its id in ``before``.
    """
    ids: list[tuple[int, int] | None] = []
    for i, name in enumerate((path, path + "-wal", path + "-shm")):
        try:
            st = os.stat(name)
        except FileNotFoundError:
            ids.append(None)
        except OSError:
            ids.append(before[i] if i < len(before) else None)
        else:
            ids.append((st.st_dev, st.st_ino))
    return tuple(ids)


def connect(path: str, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, the chosen durability."""
    conn = sqlite3.connect(
        path,
        timeout=busy_timeout,
        isolation_level=None,
        check_same_thread=False,
        cached_statements=_CACHED_STATEMENTS,
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    try:
        refuse_foreign(conn, path)
    except BaseException:
        conn.close()
        raise
    if (
        conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
        and not conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
    ):
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new, empty file
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA journal_size_limit = 67108864")
    return conn


class StoreThread:
    """One manager's connection to the store file, and the thread that owns it."""

    def __init__(self, store: SQLiteStore, owner: str, max_finished: int, finished_ttl: float | None) -> None:
        self.store = store
        self.owner = owner
        # Our own writes only touch rows we own: a row another process owns (recovered from us
        # while we looked dead, or an id it took first) is never overwritten.
        assert owner.isalnum()
        self._owner_sql = f"'{owner}'"
        self.max_finished = max_finished
        self.finished_ttl = finished_ttl
        #: Pending operations (appended by trio, taken by the thread).
        self.ops: deque[tuple[Any, ...]] = deque()
        #: Queue an op for the next group commit (within ``poll_interval``), without waking the thread.
        self.put_lazy = self.ops.append
        #: Claims asked for (how many tasks each): every round answers all of them, after its writes.
        self.claims: deque[int] = deque()
        #: Ids whose PROGRESS op is queued and not yet taken (shared with trio: see ``StoreRegistry``).
        self.progress_queued: set[str] = set()
        #: The ids the trio side's mirror has records for (its dict, only read here: a claim
        #: sends back the whole row of the others only).
        self.known: Container[str] = frozenset()
        #: Row numbers of the tasks this process inserted or claimed and has not finished.
        self._numbers: dict[str, int] = {}
        #: The statements of ``_many``, by template and rows.
        self._texts: dict[tuple[str, int], str] = {}
        self._wake = threading.Event()
        self._sleeping = False
        self._urgent = False
        self._conn: sqlite3.Connection | None = None
        self._deliver: Callable[[Batch], None] | None = None
        self._thread: threading.Thread | None = None
        self._done = 0
        self._seen = 0  # highest revision whose rows this mirror has read
        self._data_version = -1
        self._progress: dict[str, TaskRecord] = {}
        self._last_progress = 0.0
        self._last_beat = 0.0
        self._finishes = 0
        self._last_prune = 0.0
        self._last_gone_sweep = 0.0
        # Retention deletes a batch of rows at once: each deleted id dirties a random page of the id index
        # (ids are random), so a large batch dirties each page once instead of once per small batch.
        self._prune_batch = max(1, max_finished // 8)
        self._reread = False
        self.pid, self.pid_start = my_identity()
        #: The (device, inode) of the store's files as this connection opened them (see ``_check_files``).
        self._ids: tuple[tuple[int, int] | None, ...] = ()
        #: Why the disk refuses our rounds (None while they are written), and since when a stop waits for it.
        self._refusal: str | None = None
        self._stop_refused_at: float | None = None
        #: The last round was refused: the next one leaves out outcomes larger than ``BIG_OUTCOME``.
        self._lean = False
        #: What the disk said when it last refused a round (for the outcomes left out).
        self._refused_why = ""

    # ------------------------------------------------------------ trio side
    def put(self, op: tuple[Any, ...]) -> None:
        """Queue ``op`` and wake the thread for it at once (a claim, a cancel, a flush)."""
        self.ops.append(op)
        self._urgent = True
        if self._sleeping:  # the thread sets it before its last look at _urgent: no wake-up is lost
            self._sleeping = False
            self._wake.set()

    def claim(self, n: int) -> None:
        """Ask for the next ``n`` tasks of the shared queue, and wake the thread.

        Not an op: the next round answers it whatever ops wait before it (it is no write of
        ours that ``flush`` waits for), so a burst of submissions cannot hold it back.
        """
        self.claims.append(n)
        self._urgent = True
        if self._sleeping:  # as in put()
            self._sleeping = False
            self._wake.set()

    # ------------------------------------------------------------- opening
    def open(self) -> list[Row]:
        """Connect, migrate, register this process, recover dead owners, read every row (blocking)."""
        store = self.store
        conn = connect(store.path, store.synchronous, store.busy_timeout)
        try:
            migrate(conn, store.path)
            self._conn = conn
            now = time.time()
            self._begin()
            conn.execute(
                "INSERT OR REPLACE INTO processes (owner, pid, pid_start, machine, heartbeat, started) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (self.owner, self.pid, self.pid_start, MACHINE, now, now),
            )
            rev = self._next_rev()
            self._check_owners(rev, now)
            self._prune(rev, now)
            conn.execute("COMMIT")
            self._last_beat = self._last_prune = now
            self._ids = _file_ids(store.path)
            return self._read_changes(force=True)[0]
        except BaseException:
            self._conn = None
            conn.close()
            raise

    def start(self, deliver: Callable[[Batch], None]) -> None:
        """Run the loop in a daemon thread, handing every batch to ``deliver`` (called in the thread)."""
        self._deliver = deliver
        self._thread = threading.Thread(target=self._run, name="genro_tasks store", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Close the connection of a writer opened but never started (blocking, briefly)."""
        assert self._thread is None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ---------------------------------------------------------------- loop
    def _run(self) -> None:
        deliver = self._deliver
        assert deliver is not None
        poll = self.store.poll_interval
        stopped = False
        while not stopped:
            self._sleeping = True
            if self._refusal is not None:  # the disk refused the last round: retry at a slower pace
                self._wake.wait(RETRY_REFUSED)
            elif not self._urgent:
                self._wake.wait(poll)
            self._sleeping = False
            self._urgent = False
            self._wake.clear()
            batch = Batch(self._done, refused=self._refusal)  # the state the trio side mirrors, in every batch
            try:
                stopped = self._round(batch)
            except BaseException as exc:  # the store broke: tell the manager, which fails loudly
                log.critical("genro_tasks store thread failed", exc_info=exc)
                batch.error = exc
                stopped = True
                try:
                    if self._conn is not None and self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if stopped:
                batch.stopped = True
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                if batch.error is not None and not isinstance(batch.error, StoreMoved):
                    self._abandon(batch.error)
            if (
                batch.done != self._done
                or batch.refused is not None
                or batch.claims
                or batch.cancels
                or batch.rows
                or batch.gone
                or batch.beat
                or stopped
            ):
                self._done = batch.done
                deliver(batch)

    def _abandon(self, error: BaseException) -> None:
        """The thread failed: end this process's tasks in the file, on a new connection, as its death would.

        The process lives on, so no other process would recover them: its
        running tasks (their workers are killed) become FAILED with ``TaskLost``
        and its claimed tasks go back to the queue. Best effort: the failure may
        prevent it (then they wait until this process exits, as the log says).
        Not for a store file that was replaced: the file at the path is another one.
        """
        detail = (
            f"the task store writer of its TaskManager process (pid {self.pid}) failed "
            f"({type(error).__name__}: {error}); its worker was killed"
        )
        try:
            conn = sqlite3.connect(self.store.path, timeout=self.store.busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:  # pragma: no cover - it opened a moment ago
            log.error("genro_tasks: cannot end this process's tasks in the store: %s", exc)
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            rev = self._next_rev_on(conn)
            now = time.time()
            conn.execute(
                f"UPDATE tasks SET status = 'failed', error = {_LOST_SQL}, completed = ?, cancel_req = 0, "
                "payload = NULL, rev = ? WHERE owner = ? AND status = 'running'",
                (detail, now, rev, self.owner),
            )
            conn.execute(
                "UPDATE tasks SET owner = NULL, rev = ? WHERE owner = ? AND status = 'pending'", (rev, self.owner)
            )
            conn.execute("COMMIT")
            conn.execute("DELETE FROM processes WHERE owner = ?", (self.owner,))
        except sqlite3.Error as exc:
            log.error(
                "genro_tasks: cannot end this process's tasks in the store %r (%s: %s): other processes see them "
                "as they were until this process (pid %d) exits",
                self.store.path,
                type(exc).__name__,
                exc,
                self.pid,
            )
        finally:
            conn.close()

    def _round(self, batch: Batch) -> bool:
        """One group commit plus a read of the others' changes; True once STOP was processed."""
        conn = self._conn
        assert conn is not None
        ops = self.ops
        due = bool(self._progress)  # progress taken in this round is written in a later one
        # The claims first: every op handed over before one of them is then in ``ops`` already.
        claims: list[int] = []
        while self.claims:
            claims.append(self.claims.popleft())
        # One pass over what is pending: progress is coalesced aside, syncs only count.
        taken = 0
        stop = False
        writes: list[tuple[Any, ...]] = []
        keep = writes.append
        take = ops.popleft
        while ops and taken < ROUND_OPS:
            op = take()
            taken += 1
            kind = op[0]
            if kind == PROGRESS:
                rec = op[1]
                self.progress_queued.discard(rec.task_id)
                self._progress[rec.task_id] = rec
            elif kind != SYNC:
                if kind == STOP:
                    stop = True
                keep(op)
        now = time.time()
        beat = now - self._last_beat >= HEARTBEAT_EVERY
        progress = due and (now - self._last_progress >= PROGRESS_EVERY or stop)
        since = now - self._last_prune
        prune = (
            self._finishes and since >= PRUNE_EVERY and (self._finishes >= self._prune_batch or since >= PRUNE_AT_LEAST)
        ) or (self.finished_ttl is not None and beat)
        pruned: list[str] = []
        if ops:  # more than a round's worth: the next round starts at once
            self._urgent = True
            batch.claims_whole = False  # ops handed over before a claim may be among those left
        if beat:
            self._check_files()
        if writes or claims or beat or progress or prune:
            try:
                self._begin()
                rev = self._next_rev()
                foreign = self._reread
                foreign |= self._apply_all(writes, claims, stop, rev, now, batch)
                if progress or stop:
                    self._write_progress(rev)
                    self._last_progress = now
                if beat:
                    conn.execute(
                        "UPDATE processes SET heartbeat = ?, seen = ? WHERE owner = ?", (now, self._seen, self.owner)
                    )
                    foreign |= self._check_owners(rev, now)
                    self._last_beat = now
                    batch.beat = True
                if prune:
                    self._prune(rev, now, pruned)
                if stop:
                    conn.execute("DELETE FROM processes WHERE owner = ?", (self.owner,))
                conn.execute("COMMIT")
                if rev - 1 == self._seen and not foreign:
                    self._seen = rev  # nobody else wrote in between: our own rows need no re-reading
                self._reread = foreign
            except sqlite3.Error as exc:
                if not disk_refused(exc):
                    raise
                if self._conn is not None and self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if self._refused_round(exc, writes, claims, taken, stop, now, batch):
                    return True
                batch.rows, batch.gone = self._read_changes(force=False)  # the others' changes still come in
                return False
            if self._refusal is not None:
                log.warning("genro_tasks store %r: writes work again", self.store.path)
                self._refusal = batch.refused = None
                self._stop_refused_at = None
            self._lean = False
        batch.done = self._done + taken
        rows, gone = self._read_changes(force=self._reread)
        self._reread = False
        batch.rows = rows
        batch.gone = pruned + gone if pruned else gone
        return stop

    def _refused_round(
        self,
        exc: sqlite3.Error,
        writes: list[tuple[Any, ...]],
        claims: list[int],
        taken: int,
        stop: bool,
        now: float,
        batch: Batch,
    ) -> bool:
        """The disk refused the round (rolled back): keep its writes and claims for the next one.

        The round is tried again at once without its largest outcomes (one that cannot
        fit must not hold back every other write); if that is refused too, the disk is
        full: the trio side is told (``Batch.refused``), and rounds are retried every
        ``RETRY_REFUSED`` seconds, every other one without the largest outcomes, until
        one is written. A stopping writer gives up after ``STOP_GIVE_UP`` seconds, says
        what it could not write, and stops (True).
        """
        batch.claims.clear()
        batch.cancels.clear()
        batch.beat = False
        batch.claims_whole = True
        self.ops.extendleft(reversed(writes))
        self.claims.extendleft(reversed(claims))
        batch.done = self._done + taken - len(writes)
        self._refused_why = refusal_text(self.store.path, exc)
        first = self._refusal is None
        if first and not self._lean:
            self._lean = True
            self._urgent = True
            return False
        self._refusal = batch.refused = self._refused_why
        if first:
            log.error("genro_tasks: %s", self._refusal)
        if stop:
            if self._stop_refused_at is None:
                self._stop_refused_at = now
            if now - self._stop_refused_at >= STOP_GIVE_UP:
                log.error(
                    "genro_tasks: stopping without writing %d pending operations (%d submissions) to the task "
                    "store %r: %s",
                    len(self.ops) - 1,
                    sum(1 for op in self.ops if op[0] == INSERT),
                    self.store.path,
                    self._refusal,
                )
                batch.done += len(self.ops)
                self.ops.clear()
                return True
        self._lean = not self._lean
        return False

    def _check_files(self) -> None:
        """Raise :class:`StoreMoved` if the store's files on disk are no longer the ones this connection has open.

        SQLite keeps writing to a deleted (or replaced) file: another process would then open a
        different file at the same path, and the two would diverge without a word.
        """
        now = _file_ids(self.store.path, self._ids)
        if now == self._ids:
            return
        changed = [
            f"{name} {'deleted' if here is None else 'replaced'}"
            for name, was, here in zip(("the file", "its -wal", "its -shm"), self._ids, now, strict=True)
            if was != here
        ]
        raise StoreMoved(
            f"the task store {self.store.path!r} changed under this process ({', '.join(changed)}): what this "
            "TaskManager writes would go to a file no other process sees, so it stopped (its running and queued "
            "tasks failed here). Restart every process using the store; never delete, move or copy over a "
            "store or its -wal and -shm files while a process has it open"
        )

    def _begin(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:  # busy beyond busy_timeout: keep the ops, retry
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                log.warning("genro_tasks store %r is busy; retrying", self.store.path)

    def _next_rev(self) -> int:
        assert self._conn is not None
        return self._next_rev_on(self._conn)

    @staticmethod
    def _next_rev_on(conn: sqlite3.Connection) -> int:
        return int(conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'rev' RETURNING value").fetchone()[0])

    # ------------------------------------------------------------- writes
    def _apply_all(
        self, ops: list[tuple[Any, ...]], claims: list[int], stop: bool, rev: int, now: float, batch: Batch
    ) -> bool:
        """Write the ops in order, runs of inserts/starts/finishes as one statement each, then the claims.

        True if a write changed rows this process does not hold (then they are re-read).
        A task's ops come in the order insert, start, finish, so writing each run's
        inserts, then starts, then finishes keeps every task's order. A claim only
        takes rows nobody owns, which no other op of ours writes except to put them in
        the queue: running the round's claims together after everything else gives each
        what it would have found where it was sent, or more.
        """
        inserts: list[tuple[Any, ...]] = []
        starts: dict[str, TaskRecord] = {}
        finishes: list[TaskRecord] = []
        foreign = False
        for op in ops:
            kind = op[0]
            if kind == INSERT:
                inserts.append(op)
            elif kind == STARTED:
                starts[op[1].task_id] = op[1]
            elif kind == FINISH:
                finishes.append(op[1])
            else:
                self._write_runs(inserts, starts, finishes, rev, now)
                foreign |= self._apply(op, rev, now, batch)
        self._write_runs(inserts, starts, finishes, rev, now)
        if claims:
            # Every claim of the round runs once, last: it sees all the round wrote before it (what
            # each claim would have seen, and more), and a burst of small claims costs one claim.
            # A stopping process claims nothing (it could not give the tasks back any more).
            claimed = [] if stop else self._claim(sum(claims), rev)
            start = 0
            for asked in claims:
                batch.claims.append((asked, claimed[start : start + asked]))
                start += asked
        return foreign

    def _write_runs(
        self,
        inserts: list[tuple[Any, ...]],
        starts: dict[str, TaskRecord],
        finishes: list[TaskRecord],
        rev: int,
        now: float,
    ) -> None:
        conn = self._conn
        assert conn is not None
        born: set[str] = set()
        if inserts:
            # A task that also finished in this run is inserted finished: one write instead of two.
            born = self._insert(inserts, rev, {rec.task_id for rec in finishes} if finishes else None, now)
            inserts.clear()
        if finishes:
            for rec in finishes:
                starts.pop(rec.task_id, None)  # the finish writes the start time too
        if starts:
            self._many(
                "UPDATE tasks SET status = 'running', started = v.column2, worker_pid = v.column3, payload = NULL, "
                "rev = {rev} FROM (VALUES {values}) AS v WHERE tasks.n = v.column1 AND tasks.status = 'pending' "
                "AND tasks.owner = {owner}",
                [
                    (
                        self._number(tid),
                        rec.started if rec.started is not None else now,
                        rec.worker_pid,
                    )
                    for tid, rec in starts.items()
                ],
            )
            starts.clear()
        if finishes:
            self._finish(finishes, rev, now, born)
            finishes.clear()

    def _insert(self, inserts: list[tuple[Any, ...]], rev: int, finishing: set[str] | None, now: float) -> set[str]:
        """Insert new tasks; those of ``finishing`` (ours, terminal now) are written finished.

        Returns the ids written finished (their finish then only stores the outcome).
        """
        conn = self._conn
        assert conn is not None
        born: set[str] = set()
        mine = self.owner
        # Row numbers are chosen here (after the highest, as SQLite would), so the insert returns no
        # rows: every row returned is a step of its own, and each gives the GIL up to win it back.
        (top,) = conn.execute("SELECT coalesce(max(n), 0) FROM tasks").fetchone()
        n = top
        bare: list[tuple[Any, ...]] = []
        groups: dict[tuple[bool, ...], list[tuple[Any, ...]]] = {_BARE: bare}
        keep_bare = bare.append
        for _kind, rec, owner, payload, metadata in inserts:
            n += 1
            tid = rec.task_id
            status = rec.status
            if finishing and tid in finishing and owner == mine and status in _TERMINAL_STATUSES:
                born.add(tid)
                text = _STATUS_TEXT[status]
                final: tuple[Any, ...] = (
                    _utf8(rec.error),
                    _utf8(rec._traceback_text()),
                    rec.completed if rec.completed is not None else now,
                    rec.started,
                    rec.worker_pid,
                    rec.progress,
                    _utf8(rec.progress_message),
                )
                payload = None
            else:
                text = "pending"
                final = _PENDING_END
            retries = rec.retries_left
            always = (n, tid, owner, rec.name, rec.priority, rec.created, payload, text)
            if (
                final is _PENDING_END
                and retries <= 0
                and metadata is None
                and rec.timeout is None
                and rec.memory_limit is None
                and rec.group is None
            ):
                keep_bare(always)  # the usual submission: what _slim() would do, inline
                continue
            _slim(
                always,
                (
                    rec.timeout,
                    rec.memory_limit,
                    metadata,
                    rec.group,
                    retries if retries > 0 else None,
                    _options_blob(rec) if retries > 0 else None,
                    *final,
                ),
                groups,
            )
        before = conn.total_changes
        rows = []
        for present, group in groups.items():
            if group:
                self._many(_insert_sql(present), group)
                rows += group
        numbers = self._numbers
        if conn.total_changes - before == len(rows):
            for row in rows:
                numbers[row[1]] = row[0]
            return born
        # An id already in the store (never in practice: ids are random, or checked at submit).
        stored = dict(conn.execute("SELECT n, id FROM tasks WHERE n > ? AND n <= ?", (top, n)).fetchall())
        for row in rows:
            if stored.get(row[0]) == row[1]:
                numbers[row[1]] = row[0]
            else:
                born.discard(row[1])
                log.warning(
                    "task id %r was already in the store (another process submitted it); this submission "
                    "was not stored and will not run: the stored one is the task",
                    row[1],
                )
        return born

    def _apply(self, op: tuple[Any, ...], rev: int, now: float, batch: Batch) -> bool:
        """Write one op that is not an insert, start, finish or claim; True if it changed others' rows."""
        conn = self._conn
        assert conn is not None
        kind = op[0]
        if kind == RELEASE:
            self._numbers.pop(op[1], None)
            # A cancel asked by another process that this one had not acted on yet: the task never
            # started, so it ends here instead of going back to the queue for someone to run it.
            if conn.execute(
                "UPDATE tasks SET status = 'cancelled', error = 'cancelled while queued', completed = ?, "
                "cancel_req = 0, payload = NULL, rev = ? "
                "WHERE id = ? AND owner = ? AND status = 'pending' AND cancel_req != 0",
                (now, rev, op[1], self.owner),
            ).rowcount:
                self._finishes += 1
            conn.execute(
                "UPDATE tasks SET owner = NULL, rev = ? WHERE id = ? AND owner = ? AND status = 'pending'",
                (rev, op[1], self.owner),
            )
            return True  # read back, so this mirror queues it again (it may have forgotten it)
        elif kind == CANCEL:
            answer = self._cancel(op[1], op[2], rev, now)
            batch.cancels.append((op[1], answer))
            return answer == "settled"
        elif kind == RESTART:
            self._restart(op[1], op[2], rev)
        elif kind == DELETE:
            ids = op[1]
            conn.executemany("INSERT INTO gone (id, rev, at) VALUES (?, ?, ?)", [(i, rev, now) for i in ids])
            self._delete_gone(rev)
            return True
        return False

    def _restart(self, rec: TaskRecord, owner: str | None, rev: int) -> None:
        """A task's next attempt: PENDING again (ours, or in the shared queue), its last end kept, its job back."""
        conn = self._conn
        assert conn is not None
        tid = rec.task_id
        self._progress.pop(tid, None)
        # A requeue (to the queue) starts the next attempt only of the finished attempt it saw:
        # another process may have requeued it first (then the row has moved on, and stays).
        only_finished = "" if owner is not None else f" AND status IN {_TERMINAL} AND attempt = {int(rec.attempt) - 1}"
        row = conn.execute(
            "UPDATE tasks SET status = 'pending', owner = ?, started = NULL, completed = NULL, error = NULL, "
            "traceback = NULL, progress = NULL, progress_message = NULL, worker_pid = NULL, cancel_req = 0, "
            "cancel_grace = NULL, attempt = ?, prev_errors = ?, retries_left = ?, payload = ?, rev = ? "
            f"WHERE id = ?{only_finished} RETURNING n",
            (
                owner,
                rec.attempt,
                json.dumps(list(rec.previous_errors)),
                rec.retries_left,
                rec.payload,
                rev,
                tid,
            ),
        ).fetchone()
        if row is not None:
            if owner is not None:
                self._numbers[tid] = int(row[0])
            conn.execute("DELETE FROM results WHERE n = ?", (int(row[0]),))

    def _finish(self, recs: list[TaskRecord], rev: int, now: float, born: set[str]) -> None:
        """Write the ends of our tasks, and their outcomes (``born``: rows inserted finished already)."""
        progress = self._progress
        numbers = self._numbers
        completed = TaskStatus.COMPLETED
        bare: list[tuple[Any, ...]] = []
        groups: dict[tuple[bool, ...], list[tuple[Any, ...]]] = {_BARE: bare}
        keep_bare = bare.append
        values = []
        errors = []
        for rec in recs:
            tid = rec.task_id
            if progress:
                progress.pop(tid, None)
            n = numbers.pop(tid, None)
            if n is None:  # pragma: no cover - every task we own was inserted or claimed by us
                n = self._number(tid)
                del numbers[tid]
            status = rec.status
            failure = rec._failure
            try:
                if status is completed:
                    values.append((n, pickle.dumps(rec._result, 5)))
                elif failure is not None and status is TaskStatus.FAILED:
                    errors.append((n, pickle.dumps(failure, 5)))
            except Exception as exc:  # kept in this process's memory; elsewhere result() says why
                log.warning("task %r: its outcome cannot be stored: %s: %s", tid, type(exc).__name__, exc)
            if born and tid in born:
                continue
            completed_at = rec.completed
            always = (
                n,
                _STATUS_TEXT[status],
                now if completed_at is None else completed_at,
                rec.started,
                rec.worker_pid,
            )
            error = rec.error
            if error is None and failure is None and rec.progress is None and rec.progress_message is None:
                keep_bare(always)  # the usual end (a value, no progress): what _slim() would do, inline
                continue
            _slim(
                always,
                (
                    _utf8(error),
                    None if failure is None else _utf8(rec._traceback_text()),
                    rec.progress,
                    _utf8(rec.progress_message),
                ),
                groups,
            )
        for present, group in groups.items():
            if group:
                self._many(_finish_sql(present), group)
        if self._lean:
            values, errors = self._leave_out_big(values, errors)
        for kind, blobs in (("value", values), ("error", errors)):
            if blobs:
                self._many(
                    f"INSERT OR REPLACE INTO results (n, kind, data) SELECT column1, '{kind}', column2 "
                    "FROM (VALUES {values}) WHERE column1 IS NOT NULL",
                    blobs,
                )
        self._finishes += len(recs)

    def _leave_out_big(
        self, values: list[tuple[int, bytes]], errors: list[tuple[int, bytes]]
    ) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        """The outcomes of a round after the disk refused one: each too big for it becomes an error saying so.

        The task keeps its status; this process still holds the outcome in memory, and
        ``result()`` in any other process (or after a restart) raises the error.
        """
        kept_values: list[tuple[int, bytes]] = []
        kept_errors: list[tuple[int, bytes]] = []
        for what, outcomes, kept in (("value", values, kept_values), ("error", errors, kept_errors)):
            for n, blob in outcomes:
                if len(blob) <= BIG_OUTCOME:
                    kept.append((n, blob))
                    continue
                log.error(
                    "genro_tasks: a task's %s of %d bytes was left out of the store: %s",
                    what,
                    len(blob),
                    self._refused_why,
                )
                error = RuntimeError(
                    f"this task's {what} ({len(blob)} bytes) could not be stored: {self._refused_why}. "
                    "Only the process that ran it holds it (until it stops); run the task again once there is room"
                )
                kept_errors.append((n, pickle.dumps(error, 5)))
        return kept_values, kept_errors

    def _write_progress(self, rev: int) -> None:
        assert self._conn is not None
        due = self._progress
        if not due:
            return
        self._many(
            "UPDATE tasks SET progress = v.column2, progress_message = v.column3, rev = {rev} "
            "FROM (VALUES {values}) AS v WHERE tasks.n = v.column1 AND tasks.status = 'running' "
            "AND tasks.owner = {owner}",
            [(self._number(tid), rec.progress, _utf8(rec.progress_message)) for tid, rec in due.items()],
        )
        due.clear()

    def _many(self, template: str, rows: list[tuple[Any, ...]]) -> None:
        """Run ``template`` with its ``{values}`` holding many rows at once (``{rev}``, ``{owner}``: ours).

        One statement per chunk instead of one step per row (as ``executemany``
        does): each step gives the GIL up and must win it back from the busy
        trio thread, so fewer steps make a round much cheaper. The chunks have
        power-of-two sizes and the text never holds a value (``{rev}`` reads
        the round's revision from ``meta``), so each statement is parsed once
        and then found in the connection's statement cache: parsing a statement
        of many rows costs ten times more than running it. The last chunk may
        be padded up to its size with at most ``_MAX_PAD`` rows of NULLs (one
        statement instead of one per bit of the count): every template ignores
        a row whose first column is NULL (an insert filters it out; an update
        matches no row with it).
        """
        conn = self._conn
        assert conn is not None
        assert rows
        width = len(rows[0])
        most = min(_MAX_CHUNK, 1 << ((_MAX_VARIABLES // width).bit_length() - 1))
        texts = self._texts
        start, left = 0, len(rows)
        while left:
            if left >= most:
                size = most
            else:  # the next power of two if it pads little, else the largest one that fits
                size = 1 << (left - 1).bit_length()
                if size - left > _MAX_PAD:
                    size >>= 1
            sql = texts.get((template, size))
            if sql is None:
                sql = texts[template, size] = template.format(
                    rev=_CURRENT_REV, owner=self._owner_sql, values=_placeholders(width, size)
                )
            params = list(chain.from_iterable(rows[start : start + size]))
            if size > left:
                params += [None] * ((size - left) * width)
            conn.execute(sql, params)
            start += size
            left -= min(size, left)

    def _number(self, task_id: str) -> int:
        """The row number of one of our tasks (known since we inserted or claimed it)."""
        n = self._numbers.get(task_id)
        if n is None:  # pragma: no cover - every task we own was inserted or claimed by us
            assert self._conn is not None
            row = self._conn.execute("SELECT n FROM tasks WHERE id = ?", (task_id,)).fetchone()
            n = -1 if row is None else int(row[0])
            self._numbers[task_id] = n
        return n

    def _claim(self, n: int, rev: int) -> list[Claimed]:
        """Take the next ``n`` tasks of the shared queue (priority, then age) for this process.

        Only what the mirror lacks comes back: the whole row of a task it does not know yet.
        """
        conn = self._conn
        assert conn is not None
        # Two statements of one step each, not a row returned per task: every row returned is a step
        # of its own, which gives the GIL up and must win it back from the busy trio thread.
        (text,) = conn.execute(
            "SELECT json_group_array(json_array(n, id, priority, created, requeues, retries_left, has_options)) "
            "FROM (SELECT n, id, priority, created, requeues, retries_left, options IS NOT NULL AS has_options "
            "FROM tasks WHERE status = 'pending' AND owner IS NULL ORDER BY priority DESC, created LIMIT ?)",
            (n,),
        ).fetchone()
        if text == "[]":
            return []
        rows = json.loads(text)
        conn.execute(
            "UPDATE tasks SET owner = ?, rev = ? WHERE n IN (SELECT value FROM json_each(?))",
            (self.owner, rev, json.dumps([raw[0] for raw in rows])),
        )
        rows.sort(key=lambda raw: (-raw[2], raw[3]))
        numbers = self._numbers
        # The stored job and options, only where this process may lack them: a task it did not
        # insert itself (or whose insert the file did not keep), or one with a retry policy.
        wanted = [raw[0] for raw in rows if raw[6] or numbers.get(raw[1]) != raw[0]]
        blobs: dict[int, tuple[bytes | None, bytes | None]] = {}
        if wanted:
            for number, payload, options in conn.execute(
                f"SELECT n, payload, options FROM tasks WHERE n IN ({', '.join('?' * len(wanted))})", wanted
            ):
                blobs[number] = (payload, options)
        known = self.known
        unknown = [raw[0] for raw in rows if raw[1] not in known]
        full: dict[int, Row] = {}
        if unknown:
            for raw in conn.execute(
                f"SELECT n, {TASK_COLUMNS} FROM tasks WHERE n IN ({', '.join('?' * len(unknown))})", unknown
            ):
                full[raw[0]] = Row(*raw[1:])
        claimed = []
        for number, tid, _priority, _created, requeues, retries_left, _has_options in rows:
            numbers[tid] = number
            payload, options = blobs.get(number, (None, None))
            claimed.append(Claimed(tid, full.get(number), requeues, payload, options, retries_left))
        return claimed

    def _cancel(self, task_id: str, grace: float | None, rev: int, now: float) -> str:
        conn = self._conn
        assert conn is not None
        row = conn.execute("SELECT status, owner FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None or row[0] in _TERMINAL:
            return "settled"
        owner = row[1]
        if owner == self.owner:
            return "mine"
        if owner is None:
            conn.execute(
                "UPDATE tasks SET status = 'cancelled', error = 'cancelled while queued', completed = ?, "
                "payload = NULL, rev = ? WHERE id = ?",
                (now, rev, task_id),
            )
            self._finishes += 1
            self._numbers.pop(task_id, None)
            return "settled"
        proc = conn.execute("SELECT pid, pid_start, machine FROM processes WHERE owner = ?", (owner,)).fetchone()
        if proc is None or owner_alive(*proc) is False:
            conn.execute(
                "UPDATE tasks SET status = 'cancelled', error = 'cancelled by the caller; the process that ran "
                "it had died', completed = ?, cancel_req = 0, payload = NULL, rev = ? WHERE id = ?",
                (now, rev, task_id),
            )
            self._finishes += 1
            return "settled"
        conn.execute("UPDATE tasks SET cancel_req = 1, cancel_grace = ?, rev = ? WHERE id = ?", (grace, rev, task_id))
        return "asked"

    # ------------------------------------------------------ liveness, retention
    def _check_owners(self, rev: int, now: float) -> bool:
        """Recover the tasks of every dead process; True if any."""
        conn = self._conn
        assert conn is not None
        lease = self.store.lease
        dead = []
        for owner, pid, started, machine, beat in conn.execute(
            "SELECT owner, pid, pid_start, machine, heartbeat FROM processes WHERE owner != ?", (self.owner,)
        ).fetchall():
            alive = owner_alive(pid, started, machine)
            if alive is False or (alive is None and now - beat > lease):
                dead.append((owner, pid))
        # Tasks owned by a process that is not registered at all (it was recovered and removed
        # while a write of it was still in flight: cannot happen with one writer each, kept as a net).
        for owner, pid in dead:
            log.warning("genro_tasks process %d using %r died; recovering its tasks", pid, self.store.path)
            conn.execute(
                f"UPDATE tasks SET status = 'failed', error = {_LOST_SQL}, completed = ?, cancel_req = 0, "
                "payload = NULL, rev = ? WHERE owner = ? AND status = 'running'",
                (_LOST.format(pid=pid), now, rev, owner),
            )
            # Its tasks not started whose cancel was asked (and accepted) end CANCELLED: back in
            # the queue, another process would run them.
            conn.execute(
                "UPDATE tasks SET status = 'cancelled', error = ?, completed = ?, cancel_req = 0, "
                "payload = NULL, rev = ? WHERE owner = ? AND status = 'pending' AND cancel_req != 0",
                (f"cancelled while queued; process {pid}, which held it, died before starting it", now, rev, owner),
            )
            conn.execute(
                "UPDATE tasks SET owner = NULL, requeues = requeues + 1, rev = ? "
                "WHERE owner = ? AND status = 'pending' AND requeues < ? AND payload IS NOT NULL",
                (rev, owner, MAX_REQUEUES),
            )
            conn.execute(
                f"UPDATE tasks SET status = 'failed', error = {_LOST_SQL}, completed = ?, payload = NULL, rev = ? "
                "WHERE owner = ? AND status = 'pending'",
                (_LOST.format(pid=pid), now, rev, owner),
            )
            conn.execute("DELETE FROM processes WHERE owner = ?", (owner,))
            self._finishes += 1
        return bool(dead)

    def _prune(self, rev: int, now: float, gone: list[str] | None = None) -> None:
        """Apply max_finished and finished_ttl to the store.

        The ids deleted are added to ``gone`` (this process's own tombstones,
        so its mirror forgets them without re-reading the round's rows).
        """
        conn = self._conn
        assert conn is not None
        self._finishes = 0
        self._last_prune = now
        # Tombstones every registered process has read past are no longer needed (a process that
        # starts later loads the rows themselves); GONE_KEEP bounds what a stalled one holds back.
        conn.execute("DELETE FROM gone WHERE rev <= (SELECT min(seen) FROM processes)")
        if now - self._last_gone_sweep >= HEARTBEAT_EVERY:
            conn.execute("DELETE FROM gone WHERE at < ?", (now - GONE_KEEP,))
            self._last_gone_sweep = now
        (finished,) = conn.execute("SELECT count(*) FROM tasks WHERE completed IS NOT NULL").fetchone()
        doomed = finished - self.max_finished
        if self.finished_ttl is not None:
            # The expired tasks are the oldest finished ones: one prefix of the same order covers both limits.
            (expired,) = conn.execute(
                "SELECT count(*) FROM tasks WHERE completed IS NOT NULL AND completed < ?", (now - self.finished_ttl,)
            ).fetchone()
            doomed = max(doomed, expired)
        if doomed <= 0:
            return
        # The oldest ``doomed`` finished rows, in an order that is the same in each statement of the transaction
        # (the index on completed ends with n); deleted by row number, not looked up again by id.
        oldest = "SELECT n FROM tasks WHERE completed IS NOT NULL ORDER BY completed, n LIMIT ?"
        # Their ids in one step (a row returned per id would give the GIL up and win it back for each).
        (ids,) = conn.execute(f"SELECT json_group_array(id) FROM tasks WHERE n IN ({oldest})", (doomed,)).fetchone()
        # Tombstones, for the other processes' mirrors; alone, nobody would read them (a process that
        # registers later, after this transaction, reads the rows left).
        if conn.execute("SELECT 1 FROM processes WHERE owner != ? LIMIT 1", (self.owner,)).fetchone():
            conn.execute(
                f"INSERT INTO gone (id, rev, at) SELECT id, ?, ? FROM tasks WHERE n IN ({oldest})", (rev, now, doomed)
            )
        conn.execute(f"DELETE FROM results WHERE n IN ({oldest})", (doomed,))
        conn.execute(f"DELETE FROM tasks WHERE n IN ({oldest})", (doomed,))
        conn.execute("PRAGMA incremental_vacuum(256)")
        if gone is not None:
            gone.extend(json.loads(ids))

    def _delete_gone(self, rev: int) -> int:
        conn = self._conn
        assert conn is not None
        conn.execute(
            "DELETE FROM results WHERE n IN (SELECT n FROM tasks WHERE id IN (SELECT id FROM gone WHERE rev = ?))",
            (rev,),
        )
        n = conn.execute("DELETE FROM tasks WHERE id IN (SELECT id FROM gone WHERE rev = ?)", (rev,)).rowcount
        if n:
            conn.execute("PRAGMA incremental_vacuum(256)")
        return n

    # -------------------------------------------------------------- reads
    def _read_changes(self, force: bool) -> tuple[list[Row], list[str]]:
        """The rows (and deletions) above the last revision seen, if anyone else wrote since."""
        conn = self._conn
        assert conn is not None
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version and not force:
            return [], []
        self._data_version = version
        conn.execute("BEGIN")
        try:
            (top,) = conn.execute("SELECT value FROM meta WHERE key = 'rev'").fetchone()
            if top == self._seen:
                return [], []
            seen = self._seen
            rows = [Row(*r) for r in conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE rev > ?", (seen,))]
            for row in rows:
                if row.status not in _STATUS_VALUES:
                    raise RuntimeError(
                        f"the task store {self.store.path!r} holds a row this process cannot read: task {row.id!r} "
                        f"has status {row.status!r} (not one of {', '.join(sorted(_STATUS_VALUES))}); "
                        + written_wrong("the row")
                    )
            gone = [r[0] for r in conn.execute("SELECT id FROM gone WHERE rev > ?", (seen,))]
        finally:
            conn.execute("COMMIT")
        self._seen = top
        rows.sort(key=lambda r: r.rev)
        numbers = self._numbers
        if numbers:  # tasks we inserted that another process claimed, or that ended: no longer ours
            for row in rows:
                # (one that waits in the shared queue, owned by nobody, is still ours to claim)
                if row.id in numbers and (row.owner not in (None, self.owner) or row.status in _TERMINAL):
                    del numbers[row.id]
            for tid in gone:
                numbers.pop(tid, None)
        return rows, gone

    def tracked(self) -> int:
        """How many tasks this writer keeps a row number for (ours: inserted or claimed, not ended)."""
        return len(self._numbers)


def _utf8(text: str | None) -> str | None:
    """``text`` as SQLite can store it (UTF-8).

    A job's text may hold lone surrogates (a file name that is not UTF-8,
    decoded as Python does); they are stored as ``\\udcXX`` escapes.
    """
    if text is None or text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _options_blob(rec: TaskRecord) -> bytes | None:
    """The task's options, pickled, when another process needs them to run it the same way (retries)."""
    if rec.retries_left <= 0 or rec.options is None:
        return None
    try:
        return pickle.dumps(rec.options, 5)
    except Exception as exc:  # e.g. a retry_on type defined in a function: retried by this process only
        log.warning("task %r: its retry options cannot be stored: %s: %s", rec.task_id, type(exc).__name__, exc)
        return None


def read_outcome(path: str, busy_timeout: float, task_id: str) -> tuple[str, bytes] | None:
    """The stored (kind, pickled outcome) of a finished task, read on a short-lived connection (blocking).

    None if the task has no stored outcome; ``("gone", b"")`` if the task itself is no longer in the store.
    """
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        row = conn.execute(
            "SELECT r.kind, r.data FROM tasks AS t LEFT JOIN results AS r ON r.n = t.n WHERE t.id = ?", (task_id,)
        ).fetchone()
        if row is None:
            return "gone", b""
        return None if row[0] is None else (row[0], bytes(row[1]))
    finally:
        conn.close()
