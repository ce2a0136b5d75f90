"""The registry of a manager with a store: a mirror of every task in the file.

Every process keeps a :class:`~genro_tasks._task.TaskRecord` for every task
row (``list_tasks`` stays synchronous and never touches the disk). The
records of the tasks this process *owns* (it claimed them: they are in its
scheduler) are the truth and are written to the file; every other record
follows the file: the writer thread reads the rows other processes changed
and :meth:`StoreRegistry._deliver` applies them, feeding the change hub, so
``watch``, change streams and ``wait_until`` see every process's tasks.

The queue is the file's: a submitted task is inserted without an owner, and
a process with free workers claims the next ones (priority, then age) in
its writer transaction. A submission that finds this process with free
capacity and nothing older waiting is claimed in its own insert, so it is
dispatched at once without waiting for the disk.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import pickle
import sqlite3
from collections.abc import Callable
from typing import Any

import trio

from genro_tasks_worker._protocol import Failure

from .._errors import TaskLost, UnpicklableResult
from .._registry import KeyedRegistry, TaskRegistry
from .._scheduler import Scheduler
from .._task import TaskRecord, TaskStatus
from . import SQLiteStore
from ._thread import (
    CANCEL,
    DELETE,
    FINISH,
    INSERT,
    PROGRESS,
    RELEASE,
    RESTART,
    STARTED,
    STOP,
    SYNC,
    Batch,
    Claimed,
    Row,
    StoreThread,
    disk_refused,
    read_outcome,
    written_wrong,
)

log = logging.getLogger("genro_tasks")

_STATUS = {s.value: s for s in TaskStatus}
_PENDING = TaskStatus.PENDING
_RUNNING = TaskStatus.RUNNING
#: Most tasks one process claims ahead of its free workers (reached only while tasks are very short).
_MAX_AHEAD = 1024
#: Local scheduler keys of tasks another process submitted (far above the manager's own counter).
_FOREIGN_SEQ = 1 << 48
#: The integers SQLite stores: ``_INT64_LOW <= n < _INT64_HIGH``.
_INT64_LOW = -(2**63)
_INT64_HIGH = 2**63


def _user() -> str:
    """This process's user name (or uid), for error messages."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):  # pragma: no cover - no passwd entry
        return f"uid {os.geteuid()}"


def _refuse(op: tuple[Any, ...]) -> None:  # pragma: no cover - ops are only made once open
    raise AssertionError("the store is not open")


class StoreRegistry(KeyedRegistry):
    """Task records mirrored from (and written to) an SQLite store shared by several processes."""

    def __init__(
        self, store: SQLiteStore, max_finished: int, finished_ttl: float | None, clock: Callable[[], float]
    ) -> None:
        super().__init__(max_finished, finished_ttl, clock)
        self.store = store
        self.owner = os.urandom(8).hex()
        #: PENDING tasks nobody has claimed (as far as the mirror knows): the store's queue.
        self._open: dict[str, TaskRecord] = {}
        #: Tasks this process claimed and has not finished: its scheduler holds them.
        self._owned: set[str] = set()
        self._running_written: set[str] = set()
        #: The attempt last written for our tasks past their first (a retry or requeue writes the next).
        self._attempt_written: dict[str, int] = {}
        #: Finished tasks read from the file whose outcome is not loaded yet.
        self._unloaded: set[str] = set()
        self._graces: dict[str, float | None] = {}
        self._thread: StoreThread | None = None
        self._scheduler: Scheduler | None = None
        self._ahead = 0
        self._base_ahead = 0
        self._starved_at = 0.0
        self._claiming = 0
        #: The shared queue had nothing more for us when a claim last came back short.
        self._claim_idle = False
        #: Counts the tasks this process put in the shared queue; each claim in flight keeps
        #: the count it was sent at. A short claim proves the queue empty only if nothing
        #: was queued after it was sent (those inserts are written after the claim ran), and
        #: its round wrote everything handed over before it (``Batch.claims_whole``).
        self._queued_count = 0
        self._claims_sent: collections.deque[int] = collections.deque()
        self._foreign_seq = _FOREIGN_SEQ
        self._sent = 0  # ops handed to the thread
        self._done = 0  # ops the thread has committed
        self._advanced = trio.Event()
        self._stopped: trio.Event | None = None
        #: True from open() until the writer thread stopped.
        self._live = False
        self._lazy: Callable[[tuple[Any, ...]], None] = _refuse
        self._broken: BaseException | None = None
        #: Why the disk refuses the writer's rounds (see ``StoreThread._refused_round``); None while it writes.
        self._refused: str | None = None

    # ------------------------------------------------------------ lifespan
    async def open(self, scheduler: Scheduler) -> None:
        """Open the file, recover dead processes' tasks, load every task, start the writer thread.

        **Cancellation:** If cancelled, the file is closed again and nothing runs.
        """
        thread = StoreThread(self.store, self.owner, self.max_finished, self.finished_ttl)
        try:
            rows = await trio.to_thread.run_sync(thread.open)
        except Exception as exc:
            if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
                hint = "it is not an SQLite file: name a new file, or a store a TaskManager created"
            elif isinstance(exc, RuntimeError):  # already says what to do (e.g. a newer schema)
                hint = ""
            elif isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
                hint = (
                    f"another process held a write lock on it for longer than busy_timeout "
                    f"({self.store.busy_timeout:g}s); retry, or give SQLiteStore a longer busy_timeout"
                )
            elif isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
                hint = (
                    f"this user ({_user()}) cannot write the file or its directory, and even reading a store "
                    "writes to it (each process registers itself; WAL keeps -wal and -shm files beside it): "
                    "run as the application's user, or give this one write access to both"
                )
            elif disk_refused(exc):
                hint = (
                    "the disk refused a write (it is full, or the file reached this process's file size limit, "
                    "ulimit -f): free space there, or raise the limit"
                )
            else:
                hint = "check that its directory exists and is writable, and that the path is not a directory"
            raise RuntimeError(
                f"cannot open the task store {self.store.path!r}: {type(exc).__name__}: {exc}"
                + (f"; {hint}" if hint else "")
            ) from exc
        self._scheduler = scheduler
        # Claim a few tasks ahead of the free workers, so a worker that frees up finds its
        # next job here instead of waiting for a claim round trip through the file: one per
        # worker, more while short tasks keep starving the workers (see on_idle).
        self._base_ahead = self._ahead = scheduler.backend.capacity
        self._thread = thread
        thread.known = self._records
        self._lazy = thread.put_lazy
        self._live = True
        self._stopped = trio.Event()
        try:
            rows.sort(key=lambda r: r.created)
            self._apply_rows(rows, initial=True)
        except Exception as exc:  # a row another program wrote wrong: no manager on this file
            await trio.to_thread.run_sync(thread.close)
            raise RuntimeError(
                f"cannot open the task store {self.store.path!r}: it holds data this process cannot apply "
                f"({type(exc).__name__}: {exc}); {written_wrong()}"
            ) from exc
        token = trio.lowlevel.current_trio_token()
        deliver = self._deliver_safely

        def hand_over(batch: Batch) -> None:
            try:
                token.run_sync_soon(deliver, batch)
            except trio.RunFinishedError:
                pass

        thread.start(hand_over)

    def detach(self) -> None:
        """The scheduler ended: write what is pending, then stop the thread (does not wait)."""
        thread = self._thread
        if thread is not None and self._stopped is not None and not self._stopped.is_set():
            self._put((STOP,))

    async def close(self) -> None:
        """Write everything pending, unregister this process and stop the writer thread.

        **Cancellation:** The thread still finishes its writes; only this wait is cancelled.
        """
        self.detach()
        if self._stopped is not None:
            await self._stopped.wait()

    async def flush(self) -> None:
        """Wait until every change made here so far is committed to the file.

        **Cancellation:** Only the wait is cancelled; the writes happen anyway.
        """
        target = self._sent
        if self._done < target and not self._is_stopped():
            assert self._thread is not None
            self._thread.put((SYNC,))  # wake it: the group commit should not wait for its poll
            self._sent += 1
        while self._done < target and self._broken is None and self._refused is None and not self._is_stopped():
            await self._advanced.wait()
        await trio.lowlevel.checkpoint()
        if self._broken is not None:
            raise RuntimeError(f"the task store {self.store.path!r} failed: {self._broken!r}") from self._broken
        if self._refused is not None and self._done < target:
            raise OSError(errno.ENOSPC, self._refused)

    async def sync(self) -> None:
        """Read what other processes changed, now (a lookup that missed may find it after this).

        **Cancellation:** Only the wait is cancelled.
        """
        if not self._is_stopped():
            self._put((SYNC,))
            if self._refused is not None:  # the writes wait for room; the reads go on at each attempt
                await self._advanced.wait()
                return
            await self.flush()

    def _is_stopped(self) -> bool:
        return self._stopped is None or self._stopped.is_set()

    def _put(self, op: tuple[Any, ...]) -> None:
        """Hand ``op`` to the writer thread and wake it (something waits for the answer)."""
        assert self._thread is not None
        self._sent += 1
        self._thread.put(op)

    def _put_lazy(self, op: tuple[Any, ...]) -> None:
        """Hand ``op`` to the writer thread's next group commit (a few ms away; ``flush`` hastens it)."""
        self._sent += 1
        self._lazy(op)

    # ------------------------------------------------------- the seam
    async def lookup(self, task_id: str) -> TaskRecord:
        if task_id not in self._records and isinstance(task_id, str):
            await self.sync()  # submitted elsewhere an instant ago?
        return self.get(task_id)

    def waiting(self) -> int:
        return len(self._open)

    def clear_finished(self) -> int:
        done = [tid for tid, rec in self._records.items() if rec.status.is_terminal]
        for tid in done:
            del self._records[tid]
            self._unloaded.discard(tid)
        if done and self._thread is not None:
            self._put((DELETE, done))
        return len(done)

    def _retain(self, rec: TaskRecord) -> None:
        pass  # the writer thread applies the limits to the file; deletions come back as "gone"

    def prune(self) -> None:
        pass

    # -------------------------------------------------- submitting, claiming
    def admit(self, rec: TaskRecord, scheduler: Scheduler, *, chosen_id: bool = False) -> None:
        if self._refused is not None:
            raise OSError(errno.ENOSPC, f"Task {rec.task_id!r} ({rec.name}) was not submitted: {self._refused}")
        tid = rec.task_id
        metadata = _metadata_blob(rec)  # before anything is recorded: unstorable metadata is refused here
        self._records[tid] = rec
        payload = rec.payload
        # A chosen id may be submitted by another process at the same moment: only the
        # submission the file keeps may run, so it is claimed from the file like any queued
        # task (after its insert is committed) instead of being dispatched at once.
        if not chosen_id and not self._open and self._room(scheduler) > 0:
            self._owned.add(tid)
            self._put_lazy((INSERT, rec, self.owner, payload, metadata))
            scheduler.enqueue(rec)
        else:
            # Queueing one more task changes nothing on_idle() weighs (free slots, look-ahead, claims
            # on their way), only whether it has a queue to claim from: it looks again only if it had
            # none. Whatever it skips, the next delivery of the writer (this insert's) looks at anyway.
            looked = bool(self._open) and not self._claim_idle
            self._open[tid] = rec
            self._queued_more()
            self._put_lazy((INSERT, rec, None, payload, metadata))
            if not looked and not self._claiming:
                self.on_idle()
        self.changed(rec)

    def _queued_more(self) -> None:
        """This process just put a task in the shared queue: a claim may find it."""
        self._claim_idle = False
        self._queued_count += 1

    def _room(self, scheduler: Scheduler) -> int:
        free, workers = scheduler.backend.claimable()
        return free + self._ahead_for(workers) - scheduler.queued - self._claiming

    def _ahead_for(self, workers: int) -> int:
        """The look-ahead for ``workers`` workers free or busy with a job that has not run long.

        A worker whose job has run long gets no task claimed behind it: the task would wait
        there while another process may have a worker free.
        """
        base = self._base_ahead
        if workers >= base:
            return self._ahead
        return self._ahead * workers // base if base else 0

    def on_idle(self) -> None:
        """The scheduler may have room: claim queued tasks from the store for it.

        Called after every dispatch round (each task's end) and submission: keep it short.
        """
        if not self._open or self._claim_idle or not self._live:
            return
        scheduler = self._scheduler
        if scheduler is None or not scheduler.accepting:
            return
        free, workers = scheduler.backend.claimable()
        queued = scheduler.queued
        claiming = self._claiming
        if free and claiming and not queued and self._ahead < _MAX_AHEAD:
            # A worker is idle while a claim is on its way: tasks are short, look further ahead.
            self._ahead = min(2 * self._ahead, _MAX_AHEAD)
            self._starved_at = trio.current_time()
        ahead = self._ahead_for(workers)
        want = free + ahead - queued - claiming  # as _room(), with what is at hand
        # Claim in batches (half the look-ahead at once), unless a worker could starve meanwhile.
        if want > 0 and (want * 2 >= ahead or queued + claiming == 0):
            self._claiming = claiming + want
            self._claims_sent.append(self._queued_count)
            assert self._thread is not None
            self._thread.claim(want)

    def _take_all(self, claimed: list[Claimed]) -> bool:
        """Tasks this process claimed: queue them in the scheduler (True if any), or give them back.

        The caller dispatches once it queued them all.
        """
        scheduler = self._scheduler
        if scheduler is None or not scheduler.accepting:
            for c in claimed:
                self._take(c)  # gives it back
            return False
        records = self._records
        open_ = self._open
        owned = self._owned
        enqueue = scheduler.enqueue
        taken = False
        for c in claimed:
            # The usual claim, inline: a task of ours, known here, with its job and no retry policy.
            if c.payload is None and c.options is None and c.requeues == 0:
                rec = records.get(c.task_id)
                if rec is not None and rec.payload is not None and rec.attempt == 1 and not rec.status.is_terminal:
                    open_.pop(c.task_id, None)
                    owned.add(c.task_id)
                    enqueue(rec, dispatch=False)
                    taken = True
                    continue
            taken |= self._take(c)
        return taken

    def _take(self, claimed: Claimed) -> bool:
        """A task this process claimed: queue it in the scheduler (True), or give it back.

        The caller dispatches once it queued them all.
        """
        tid = claimed.task_id
        rec = self._records.get(tid)
        if rec is None:
            if claimed.row is None:  # forgotten since the claim (cleared): back to the queue, read again
                self._put((RELEASE, tid))
                return False
            rec = self._new_record(claimed.row)
        self._open.pop(tid, None)
        scheduler = self._scheduler
        if rec.status.is_terminal:  # pragma: no cover - the claim and the cancel are serialised
            return False
        if scheduler is None or not scheduler.accepting:
            self._put((RELEASE, tid))
            return False
        if claimed.payload is None and rec.payload is None:
            rec.finish_failed(TaskLost(tid, "its job is missing from the store"))
            self._owned.add(tid)
            self.changed(rec)
            return False
        if claimed.payload is not None:  # the stored job: another process may have submitted this id first
            rec.payload = claimed.payload
        if claimed.options is not None and rec.options is None:
            try:
                rec.options = pickle.loads(claimed.options)
            except Exception as exc:  # its retry_on names a class this process cannot import
                log.warning(
                    "task %r: its retry options cannot be read here (%s: %s): no retries", tid, type(exc).__name__, exc
                )
            else:
                rec.retries_left = claimed.retries_left
        if rec.attempt > 1:
            self._attempt_written[tid] = rec.attempt
        rec.requeues = max(rec.requeues, claimed.requeues)
        self._owned.add(tid)
        scheduler.enqueue(rec, dispatch=False)
        return True

    # ---------------------------------------------------------------- changes
    def changed(self, rec: TaskRecord | None) -> None:
        # Called for every transition of every task: the ops are appended inline (no _put_lazy call).
        if rec is not None and self._thread is not None:
            tid = rec.task_id
            if tid in self._owned:
                status = rec.status
                if status is _PENDING:
                    if rec.attempt != self._attempt_written.get(tid, 1):  # a retry, or a requeue
                        self._attempt_written[tid] = rec.attempt
                        self._running_written.discard(tid)
                        self._put_lazy((RESTART, rec, self.owner))
                elif status is _RUNNING:
                    if tid in self._running_written:
                        queued = self._thread.progress_queued
                        if tid not in queued:
                            queued.add(tid)
                            self._put_lazy((PROGRESS, rec))
                    else:
                        self._running_written.add(tid)
                        self._sent += 1
                        self._lazy((STARTED, rec))
                else:  # an end
                    self._owned.discard(tid)
                    self._running_written.discard(tid)
                    if self._attempt_written:
                        self._attempt_written.pop(tid, None)
                    if self._graces:
                        self._graces.pop(tid, None)
                    self._sent += 1
                    self._lazy((FINISH, rec))
        super().changed(rec)

    def requeue(self, rec: TaskRecord, scheduler: Scheduler) -> None:
        """An operator requeues a finished task: its next attempt goes to the shared queue (any process runs it)."""
        if rec.payload is None:
            raise ValueError(
                f"Task {rec.task_id!r} cannot be requeued by this process: its job was submitted by another "
                "process (or before a restart) and the store keeps a job only until it starts; requeue it "
                "from the process that submitted it, or submit it again"
            )
        tid = rec.task_id
        TaskRegistry.reopen(self, rec)
        self._unloaded.discard(tid)
        self._attempt_written.pop(tid, None)
        self._owned.discard(tid)
        rec.requeue()
        self._open[tid] = rec
        self._queued_more()
        self._put_lazy((RESTART, rec, None))
        self.changed(rec)
        self.on_idle()

    def release(self, recs: list[TaskRecord]) -> None:
        """This process stops: give the tasks it claimed but never dispatched back to the shared queue."""
        for rec in recs:
            tid = rec.task_id
            self._owned.discard(tid)
            self._open[tid] = rec
            self._put_lazy((RELEASE, tid))

    def cancel_elsewhere(self, rec: TaskRecord, grace: float | None) -> bool:
        tid = rec.task_id
        if tid in self._owned or self._thread is None or self._stopped is None or self._stopped.is_set():
            return False
        self._graces[tid] = grace
        self._put((CANCEL, tid, grace))
        return True

    async def fetch(self, rec: TaskRecord) -> None:
        """Load the outcome of a task that finished in another process (or before a restart).

        **Cancellation:** Only the load is abandoned; a later call loads it again.
        """
        tid = rec.task_id
        if tid not in self._unloaded:
            return
        found = await trio.to_thread.run_sync(_load, self.store.path, self.store.busy_timeout, tid)
        forgotten = tid not in self._records  # the file's deletion reached the mirror meanwhile
        if tid not in self._unloaded and not forgotten:
            return  # loaded by a concurrent fetch meanwhile
        if (found is not None and found[0] == "gone") or (found is None and forgotten):
            self._unloaded.discard(tid)
            raise KeyError(
                f"Task not found: {tid} (the store forgot it after it finished: clear_completed() or "
                "max_finished/finished_ttl in one of the processes on the store; keep finished tasks "
                "longer there to read their results)"
            )
        if found is None:
            if rec.status is TaskStatus.COMPLETED:
                raise UnpicklableResult(
                    f"Task {tid!r} ({rec.name}) completed in another process, but its value could not be "
                    "stored there (it could not be pickled); return plain data instead"
                )
            self._unloaded.discard(tid)
            return
        kind, value = found
        if kind == "value":
            rec._result = value
        elif rec.status is TaskStatus.COMPLETED:
            raise value
        elif isinstance(value, BaseException | Failure):
            rec._failure = value
        self._unloaded.discard(tid)

    # ------------------------------------------------------ from the thread
    def _deliver_safely(self, batch: Batch) -> None:
        """Apply a batch; if the file held what this process cannot apply, stop the manager instead of trio.

        An exception escaping a ``run_sync_soon`` callback would crash the whole trio run.
        """
        try:
            self._deliver(batch)
        except Exception as exc:
            error = RuntimeError(
                f"the task store {self.store.path!r} holds data this process cannot apply ({type(exc).__name__}: "
                f"{exc}); {written_wrong()}"
            )
            error.__cause__ = exc
            log.critical("genro_tasks: %s", error, exc_info=exc)
            self._fail(error)
            self.detach()  # the writer writes what is pending (the ends of the tasks failed here) and stops

    def _fail(self, error: BaseException) -> None:
        """The store failed: fail the manager, and every task this mirror follows, and wake every waiter.

        The tasks claimed here that no worker started go back to the shared queue
        (the writer, or ``_abandon`` if it died, puts them there), so here they end
        as tasks this process lost sight of, not as tasks that failed with it.
        """
        if self._broken is not None:
            return
        self._broken = error
        scheduler = self._scheduler
        if scheduler is not None:
            self.release(scheduler.take_back_waiting(len(self._owned)))
            scheduler.failed(error)
        self._lose_sight(error)
        advanced = self._advanced
        self._advanced = trio.Event()
        advanced.set()

    def _deliver(self, batch: Batch) -> None:
        """Apply what the writer thread did and read (runs in the trio thread)."""
        taken = False
        for asked, claimed in batch.claims:
            self._claiming -= asked
            if self._claims_sent.popleft() == self._queued_count and len(claimed) < asked and batch.claims_whole:
                self._claim_idle = True
            if claimed:
                taken |= self._take_all(claimed)
        if taken and self._scheduler is not None:
            self._scheduler.dispatch()  # once for the whole claim (not a look for more work per task)
        for tid, answer in batch.cancels:
            grace = self._graces.pop(tid, None)
            if answer == "mine":
                rec = self._records.get(tid)
                if rec is not None and tid in self._owned and self._scheduler is not None:
                    self._scheduler.cancel(rec, grace)
        if batch.rows:
            self._claim_idle = False
            self._apply_rows(batch.rows, initial=False)
        for tid in batch.gone:
            rec = self._records.pop(tid, None)
            self._open.pop(tid, None)
            self._unloaded.discard(tid)
            if rec is not None and not rec.status.is_terminal and tid not in self._owned:
                rec.finish_failed(TaskLost(tid, "the store forgot it before this process saw how it ended"))
                super().changed(rec)
        if batch.gone:
            self.hub.publish(None)  # tasks were forgotten: list_tasks() changed
        self._done = batch.done
        advanced = self._advanced
        self._advanced = trio.Event()
        advanced.set()
        self._refused = batch.refused
        if batch.error is not None:
            self._fail(batch.error)
        if batch.stopped and self._stopped is not None:
            self._live = False
            self._stopped.set()
        if self._ahead > self._base_ahead and trio.current_time() - self._starved_at > 1.0:
            self._ahead = max(self._base_ahead, self._ahead // 2)  # no starvation for a while: hoard less
            self._starved_at = trio.current_time()
        if batch.beat:
            self._shed()
        self.on_idle()

    def _lose_sight(self, error: BaseException) -> None:
        """The writer thread died: every task this mirror follows and the scheduler does not hold ends here.

        Their rows would never move again in this process (a queued task, another
        process's running one): whoever awaits them gets ``TaskLost`` instead of waiting forever.
        """
        self._open.clear()
        for rec in list(self._records.values()):
            if not rec.status.is_terminal:
                rec.finish_failed(
                    TaskLost(
                        rec.task_id,
                        f"this process lost its task store {self.store.path!r} ({type(error).__name__}: {error}); "
                        "the task may still run, or have run, in another process: look it up there, or here after "
                        "a restart",
                    )
                )
                super().changed(rec)

    def _shed(self) -> None:
        """Give back to the shared queue the claimed tasks that now wait behind long jobs here.

        A task is claimed ahead of workers whose jobs had not run long then (a
        process that starts with a backlog claims some for each worker); once
        those jobs have run long, such a task would wait for them to end while
        another process may have a worker free. Checked at every heartbeat,
        so it waits about a second at most.
        """
        scheduler = self._scheduler
        if scheduler is None or not scheduler.accepting:
            return
        free, workers = scheduler.backend.claimable()
        recs = scheduler.take_back_waiting(scheduler.queued - free - self._ahead_for(workers))
        if recs:
            self.release(recs)
            self._queued_more()
            self.hub.publish(None)  # the shared queue changed (statistics().tasks_queued)

    def _apply_rows(self, rows: list[Row], *, initial: bool) -> None:
        records = self._records
        owned = self._owned
        claims_changed = False
        for row in rows:
            tid = row.id
            rec = records.get(tid)
            if rec is None:
                rec = self._new_record(row)
                if initial and rec.status.is_terminal:
                    rec.noted = True  # finished before we started: not counted as ours
                super().changed(rec)
                continue
            if tid in owned:
                # A cancel request from another process; a later one without grace escalates an
                # earlier graceful one to a kill (as a second cancel() here would).
                if row.cancel_req and (
                    tid not in self._graces or (row.cancel_grace is None and self._graces[tid] is not None)
                ):
                    self._graces[tid] = row.cancel_grace
                    if self._scheduler is not None:
                        self._scheduler.cancel(rec, row.cancel_grace)
                continue
            renewed = row.attempt != rec.attempt
            if renewed:
                self._renew(rec, row)
            elif rec.status.is_terminal:
                continue
            if row.status == "pending" and row.owner is None:
                if tid not in self._open:
                    self._open[tid] = rec
                    claims_changed = True
            elif self._open.pop(tid, None) is not None:
                claims_changed = True
            if self._update(rec, row) or renewed:
                super().changed(rec)
        if claims_changed:
            self.hub.publish(None)  # the shared queue changed (statistics().tasks_queued)

    def _renew(self, rec: TaskRecord, row: Row) -> None:
        """Another process started the next attempt of ``rec`` (a retry, or an operator's requeue)."""
        if rec.status.is_terminal:
            TaskRegistry.reopen(self, rec)
        self._unloaded.discard(rec.task_id)
        rec.status = TaskStatus.PENDING
        rec.started = rec.completed = None
        rec.error = rec.progress = rec.progress_message = rec.worker_pid = None
        rec._result = rec._failure = None
        rec.attempt = row.attempt
        rec.previous_errors = _errors(row)
        rec.version += 1

    def _new_record(self, row: Row) -> TaskRecord:
        metadata = None
        if row.metadata is not None:
            try:
                metadata = pickle.loads(row.metadata)
            except Exception as exc:
                metadata = {"unreadable_metadata": f"{type(exc).__name__}: {exc}"}
        self._foreign_seq += 1
        rec = TaskRecord(
            self._foreign_seq, row.id, row.name, b"", metadata, row.timeout, row.priority, row.memory_limit
        )
        rec.payload = None
        rec.created = row.created
        rec.requeues = row.requeues
        rec.group = row.grp
        rec.attempt = row.attempt
        rec.previous_errors = _errors(row)
        self._records[row.id] = rec
        if row.status == "pending" and row.owner is None:
            self._open[row.id] = rec
        self._update(rec, row)
        return rec

    def _update(self, rec: TaskRecord, row: Row) -> bool:
        """Bring a record another process owns up to its row; True if anything visible changed."""
        status = _STATUS[row.status]
        changed = False
        if status is not TaskStatus.PENDING and rec.status is TaskStatus.PENDING and row.started is not None:
            rec.status = TaskStatus.RUNNING
            rec.started = row.started
            rec.worker_pid = row.worker_pid
            changed = True
        if row.progress != rec.progress or row.progress_message != rec.progress_message:
            rec.progress = row.progress
            rec.progress_message = row.progress_message
            changed = True
        if status.is_terminal:
            rec.worker_pid = row.worker_pid
            if row.started is not None:
                rec.started = row.started
            error = row.error or ""
            if status is TaskStatus.FAILED:
                type_name, _, message = error.partition(": ")
                if type_name == "TaskLost":
                    rec._failure = TaskLost(rec.task_id, message.partition(" was lost: ")[2] or message)
                else:
                    rec._failure = Failure(None, type_name, message, row.traceback or "")
            if status is not TaskStatus.CANCELLED:
                self._unloaded.add(rec.task_id)
            rec._finish(status, row.error)
            rec.completed = row.completed
            return True
        if changed:
            rec.version += 1
        return changed


def _metadata_blob(rec: TaskRecord) -> bytes | None:
    """A new task's metadata, pickled for the store; raises at submit for what the store cannot hold.

    Raises:
        ValueError: Its ``task_id`` or ``group`` is not valid UTF-8 text, or its
            ``priority`` or ``retries`` do not fit in 64 bits (SQLite's integers).
        TypeError: Its metadata cannot be pickled.
    """
    if not (_INT64_LOW <= rec.priority < _INT64_HIGH and _INT64_LOW <= rec.retries_left < _INT64_HIGH):
        for option, number in (("priority", rec.priority), ("retries", rec.retries_left)):
            if not _INT64_LOW <= number < _INT64_HIGH:
                raise ValueError(
                    f"{option}={number} cannot be stored (a store keeps 64-bit integers); "
                    f"pass a {option} between {_INT64_LOW} and {_INT64_HIGH - 1}"
                )
    group = rec.group
    if not rec.task_id.isascii() or (group is not None and not group.isascii()):
        for option, text in (("task_id", rec.task_id), ("group", group)):
            if text is not None and not text.isascii():
                try:
                    text.encode()
                except UnicodeEncodeError:
                    raise ValueError(
                        f"{option} {text!r} cannot be stored: it is not valid Unicode text (it holds lone "
                        "surrogates, e.g. from a file name that is not UTF-8); pass a str that encodes as UTF-8"
                    ) from None
    if not rec.metadata:
        return None
    try:
        return pickle.dumps(rec.metadata, 5)
    except Exception as exc:
        raise TypeError(
            f"Task {rec.task_id!r}: its metadata cannot be stored (the store pickles it for every process): "
            f"{type(exc).__name__}: {exc}; pass plain data (str, numbers, lists, dicts)"
        ) from exc


def _errors(row: Row) -> tuple[str, ...]:
    """How the earlier attempts of a task ended, from its row."""
    if not row.prev_errors:
        return ()
    try:
        return tuple(str(e) for e in json.loads(row.prev_errors))
    except ValueError:  # pragma: no cover - written by us as JSON
        return (row.prev_errors,)


def _load(path: str, busy_timeout: float, task_id: str) -> tuple[str, Any] | None:
    """Read and unpickle a stored outcome (in a worker thread: a large result never blocks the loop)."""
    found = read_outcome(path, busy_timeout, task_id)
    if found is None:
        return None
    kind, data = found
    if kind == "gone":
        return found
    try:
        return kind, pickle.loads(data)
    except Exception as exc:
        error = UnpicklableResult(
            f"Task {task_id!r}: its stored {'value' if kind == 'value' else 'error'} cannot be unpickled in this "
            f"process: {type(exc).__name__}: {exc}; make its class importable here"
        )
        return "error", error
