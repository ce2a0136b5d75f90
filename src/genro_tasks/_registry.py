"""The registry of task records and the change hub that fans changes out.

:class:`TaskRegistry` is the seam a store implements: it keeps the records
(``add``/``get``/``find``), applies retention (``max_finished``,
``finished_ttl``), counts terminal states, and is told of every change
(:meth:`TaskRegistry.changed`). :class:`MemoryRegistry` is the in-memory
implementation (the default); a persistent store would write the change in
``changed`` and answer ``get``/``find`` from its storage.

:class:`ChangeHub` delivers changes to the live views: per-task watchers
(``watch``), change streams (``open_change_stream``), anyone waiting for any
change (:func:`genro_tasks.testing.wait_until`), and ``submit_wait``, which
waits on its own "room available" condition instead of on every change.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ._task import _TERMINAL, GroupInfo, TaskInfo, TaskRecord, TaskStatus, follow
from ._watch import ChangeStream, TaskWatcher

#: How many groups whose tasks all finished are remembered (oldest forgotten first).
MAX_FINISHED_GROUPS = 1000


class GroupStats:
    """The live counts of one group, kept by the registry as its tasks change (internal).

    Only what cannot be recomputed is counted as it happens: how many tasks joined and how
    many ended in each terminal status. The live tasks are kept by id, so PENDING and RUNNING
    are counted when asked (a task's move from PENDING to RUNNING costs nothing here).
    """

    __slots__ = ("active", "counts", "name", "started_at", "total")

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.total = 0
        #: Tasks that ended in each terminal status (and are still so).
        self.counts = dict.fromkeys(_TERMINAL, 0)
        #: The group's tasks that are not finished, by id.
        self.active: dict[str, TaskRecord] = {}
        #: Clock time at which the group's first task was submitted.
        self.started_at = now

    def info(self, now: float) -> GroupInfo:
        counts = self.counts
        total = self.total
        done = counts[TaskStatus.COMPLETED] + counts[TaskStatus.FAILED] + counts[TaskStatus.CANCELLED]
        running = 0
        partial = 0.0
        for rec in self.active.values():
            if rec.status is TaskStatus.RUNNING:
                running += 1
            if rec.progress is not None:
                partial += rec.progress
        progress = min(1.0, (done + partial) / total) if total else 1.0
        eta: float | None
        if done == total:
            eta = 0.0
        elif progress <= 0.0:
            eta = None
        else:
            eta = max(0.0, now - self.started_at) * (1.0 - progress) / progress
        return GroupInfo(
            group=self.name,
            total=total,
            pending=len(self.active) - running,
            running=running,
            completed=counts[TaskStatus.COMPLETED],
            failed=counts[TaskStatus.FAILED],
            cancelled=counts[TaskStatus.CANCELLED],
            progress=progress,
            eta=eta,
        )


if TYPE_CHECKING:
    from ._scheduler import Scheduler


class ChangeHub:
    """Fan-out of task changes to watchers, streams and waiters; never blocks."""

    def __init__(self) -> None:
        self._streams: weakref.WeakSet[ChangeStream] = weakref.WeakSet()
        self._changed: trio.Event | None = None
        self._room: trio.Event | None = None
        self.closed = False
        #: False when nobody can be listening (no stream, no waiter): publishing
        #: then skips everything but a task's own watchers. Kept conservatively.
        self.listening = False

    def publish(self, rec: TaskRecord | None) -> None:
        """Deliver a change of ``rec`` (None: of the pool, no task) to everyone listening."""
        if rec is not None:
            watchers = rec.watchers
            if watchers is not None:
                for ref in watchers if len(watchers) == 1 else tuple(watchers):
                    watcher = ref()
                    if watcher is not None:
                        watcher._push(rec)
                if rec.status.is_terminal:
                    rec.watchers = None
            if self._streams:
                for stream in self._streams:
                    stream._push(rec)
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()
        self.listening = bool(self._streams)

    async def wait_change(self) -> None:
        """Wait for the next change of any task or of the pool.

        **Cancellation:** Only the wait is cancelled.
        """
        if self._changed is None:
            self._changed = trio.Event()
            self.listening = True
        await self._changed.wait()

    def room_freed(self) -> None:
        """A queued task left the queue (or the manager stopped): wake ``submit_wait``."""
        room = self._room
        if room is not None:
            self._room = None
            room.set()

    async def wait_room(self) -> None:
        """Wait until the queue may have room again.

        **Cancellation:** Only the wait is cancelled.
        """
        if self._room is None:
            self._room = trio.Event()
        await self._room.wait()

    def watch(self, rec: TaskRecord) -> TaskWatcher:
        """A watcher of ``rec`` that receives its changes from now on."""
        watcher = TaskWatcher(rec)
        if not rec.status.is_terminal:
            follow(rec, weakref.ref(watcher))
        return watcher

    def open_stream(self, max_pending: int) -> ChangeStream:
        """A change stream of every task (already ended if the hub is closed)."""
        stream = ChangeStream(max_pending)
        if self.closed:
            stream.close()
        else:
            self._streams.add(stream)
            self.listening = True
            self.publish(None)  # a new subscriber: waiters on "any change" may care
        return stream

    @property
    def stream_count(self) -> int:
        """How many change streams are open."""
        return len(self._streams)

    def close(self) -> None:
        """Nothing will change any more: end every stream and wake every waiter."""
        self.closed = True
        for stream in list(self._streams):
            stream.close()
        self.room_freed()
        self.publish(None)


class TaskRegistry(ABC):
    """Where a manager's task records live: the seam a store implements.

    Implementations keep records, retention and counters; the base class
    adds the fan-out through :attr:`hub`. Every method is synchronous and is
    called from the manager's trio thread.
    """

    def __init__(self, max_finished: int, finished_ttl: float | None, clock: Callable[[], float]) -> None:
        self.max_finished = max_finished
        self.finished_ttl = finished_ttl
        self._clock = clock
        self.hub = ChangeHub()
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        #: Live counts of every group, by name (see :meth:`group_info`).
        self._groups: dict[str, GroupStats] = {}
        #: Groups whose tasks all finished, oldest first (forgotten beyond MAX_FINISHED_GROUPS).
        self._finished_groups: OrderedDict[str, None] = OrderedDict()

    @abstractmethod
    def add(self, rec: TaskRecord) -> None:
        """Keep a newly submitted record (its id is new: see :meth:`__contains__`)."""

    @abstractmethod
    def get(self, task_id: str) -> TaskRecord:
        """The record of ``task_id``; KeyError ``Task not found: <id>`` if unknown."""

    @abstractmethod
    def __contains__(self, task_id: object) -> bool:
        """True if ``task_id`` is a kept task."""

    @abstractmethod
    def __len__(self) -> int:
        """How many records are kept."""

    @abstractmethod
    def find(self, status: TaskStatus | None) -> list[TaskInfo]:
        """Snapshots of the kept tasks (of one status, or all), oldest first."""

    @abstractmethod
    def records(self) -> list[TaskRecord]:
        """The kept records themselves, oldest first: a listing filters and sorts them, then snapshots a page.

        Live objects: read them in the trio thread, at once, and never change them.
        """

    @abstractmethod
    def clear_finished(self) -> int:
        """Forget every finished task; return how many."""

    @abstractmethod
    def _retain(self, rec: TaskRecord) -> None:
        """``rec`` just became terminal: keep it under the retention limits."""

    @abstractmethod
    def prune(self) -> None:
        """Apply the retention limits now."""

    # A store overrides these; in memory they are the obvious (and free) thing.
    #: Called by the scheduler when it may have free workers (a store claims queued tasks then).
    on_idle: Callable[[], None] | None = None

    def admit(self, rec: TaskRecord, scheduler: Scheduler, *, chosen_id: bool = False) -> None:
        """Keep a new submission and queue it (a store may leave it in its shared queue instead).

        ``chosen_id``: the caller chose the task's id, so another process may submit the same
        one at the same moment (a store then lets only the stored submission run).
        """
        self.add(rec)
        scheduler.enqueue(rec)
        self.changed(rec)

    async def lookup(self, task_id: str) -> TaskRecord:
        """As :meth:`get`, for async callers (a store may first read what other processes added).

        **Cancellation:** Only the lookup is cancelled.
        """
        return self.get(task_id)

    async def fetch(self, rec: TaskRecord) -> None:
        """Make ``rec.outcome()`` answerable (a store loads the outcome of a task finished elsewhere).

        **Cancellation:** Only the load is cancelled.
        """
        return None  # nothing to do in memory

    def cancel_elsewhere(self, rec: TaskRecord, grace: float | None) -> bool:
        """Start cancelling a task this process does not run; False if the scheduler here must do it."""
        return False

    def release(self, recs: list[TaskRecord]) -> None:
        """Queued tasks this manager gives up at shutdown (only a shared store takes them back)."""
        raise AssertionError("only a shared store takes tasks back")  # pragma: no cover

    def waiting(self) -> int:
        """Tasks queued outside this manager's scheduler (in a shared store)."""
        return 0

    async def open(self, scheduler: Scheduler) -> None:
        """Called by ``startup()`` before the scheduler runs.

        **Cancellation:** Nothing is left open.
        """
        return None  # nothing to do in memory

    def detach(self) -> None:
        """The scheduler ended: nothing the manager holds changes any more."""
        return None  # nothing to do in memory

    async def close(self) -> None:
        """Called by ``shutdown()`` once the scheduler ended: write what is pending.

        **Cancellation:** Only the wait is cancelled.
        """
        return None  # nothing to do in memory

    async def flush(self) -> None:
        """Wait until every change made so far is durable (nothing to wait for in memory).

        **Cancellation:** Only the wait is cancelled.
        """
        await trio.lowlevel.checkpoint()

    def changed(self, rec: TaskRecord | None) -> None:
        """A task (or, with None, the pool) changed: count, retain, fan out.

        Called by the scheduler for every transition; keep it short.
        """
        if (
            rec is not None
            and rec.group is not None
            and (rec.group_status is not TaskStatus.PENDING or rec.status in _TERMINAL)
        ):
            self._count_group(rec)  # joins, ends or lives again (a live task's other changes: nothing to count)
        if rec is not None and rec.status.is_terminal and not rec.noted:
            rec.noted = True
            rec.finished_at = self._clock()
            status = rec.status
            if status is TaskStatus.COMPLETED:
                self.completed += 1
            elif status is TaskStatus.FAILED:
                self.failed += 1
            else:
                self.cancelled += 1
            self._retain(rec)
        hub = self.hub
        if hub.listening or (rec is not None and rec.watchers is not None):
            hub.publish(rec)

    def _count_group(self, rec: TaskRecord) -> None:
        """Count ``rec`` joining its group, finishing, or (requeued) living again; on every change: lean."""
        status = rec.status
        old = rec.group_status  # None: not counted yet; PENDING: counted live; else the terminal status counted
        if status in _TERMINAL:
            if old is status:
                return
        elif old is TaskStatus.PENDING:
            return  # a live task stays live (RUNNING, progress, a retry)
        name = rec.group
        assert name is not None
        stats = self._groups.get(name)
        if stats is None:
            stats = self._groups[name] = GroupStats(name, self._clock())
        active = stats.active
        if old is None:
            stats.total += 1
        elif old is not TaskStatus.PENDING:
            stats.counts[old] -= 1
        if status in _TERMINAL:
            stats.counts[status] += 1
            rec.group_status = status
            active.pop(rec.task_id, None)  # absent if first seen finished (loaded from a store)
            if not active:
                finished = self._finished_groups
                finished[name] = None
                if len(finished) > MAX_FINISHED_GROUPS:
                    del self._groups[finished.popitem(last=False)[0]]
        else:
            rec.group_status = TaskStatus.PENDING
            if not active:
                self._finished_groups.pop(name, None)
            active[rec.task_id] = rec

    def group_info(self, name: str) -> GroupInfo:
        """A snapshot of group ``name``; KeyError ``Group not found: <name>`` if unknown."""
        stats = self._groups.get(name) if isinstance(name, str) else None
        if stats is None:
            raise KeyError(f"Group not found: {name}")
        return stats.info(self._clock())

    def groups(self) -> list[GroupInfo]:
        """Snapshots of every known group, oldest first."""
        now = self._clock()
        return [stats.info(now) for stats in self._groups.values()]

    def group_members(self, name: str) -> list[TaskRecord]:
        """The records of group ``name`` that are not finished (KeyError if the group is unknown)."""
        stats = self._groups.get(name) if isinstance(name, str) else None
        if stats is None:
            raise KeyError(f"Group not found: {name}")
        return list(stats.active.values())

    def requeue(self, rec: TaskRecord, scheduler: Scheduler) -> None:
        """An operator requeues the finished ``rec``: its next attempt is queued (a store may share it)."""
        self.reopen(rec)
        scheduler.requeue(rec)

    def reopen(self, rec: TaskRecord) -> None:
        """A finished ``rec`` starts a new attempt (an operator's requeue): stop retaining it as finished.

        A store overrides it to drop the record from its finished-records index too
        (and calls ``super().reopen(rec)``).
        """
        rec.noted = False

    def _forget_finished_groups(self) -> None:
        for name in self._finished_groups:
            del self._groups[name]
        self._finished_groups.clear()


class KeyedRegistry(TaskRegistry):
    """A registry whose records this process holds in a dict by id (in memory, or mirrored from a store)."""

    def __init__(self, max_finished: int, finished_ttl: float | None, clock: Callable[[], float]) -> None:
        super().__init__(max_finished, finished_ttl, clock)
        self._records: dict[str, TaskRecord] = {}

    def add(self, rec: TaskRecord) -> None:
        self._records[rec.task_id] = rec

    def get(self, task_id: str) -> TaskRecord:
        try:
            return self._records[task_id]
        except (KeyError, TypeError):
            raise KeyError(f"Task not found: {task_id}") from None

    def __contains__(self, task_id: object) -> bool:
        try:
            return task_id in self._records
        except TypeError:
            return False

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[TaskRecord]:
        self.prune()
        return list(self._records.values())

    def find(self, status: TaskStatus | None) -> list[TaskInfo]:
        return [rec.snapshot() for rec in self.records() if status is None or rec.status is status]


class MemoryRegistry(KeyedRegistry):
    """Records in this process's memory (the default registry)."""

    def __init__(self, max_finished: int, finished_ttl: float | None, clock: Callable[[], float]) -> None:
        super().__init__(max_finished, finished_ttl, clock)
        self._finished: deque[TaskRecord] = deque()

    def clear_finished(self) -> int:
        done = [tid for tid, rec in self._records.items() if rec.status.is_terminal]
        for tid in done:
            del self._records[tid]
        self._finished.clear()
        self._forget_finished_groups()
        return len(done)

    def reopen(self, rec: TaskRecord) -> None:
        try:
            self._finished.remove(rec)
        except ValueError:
            pass

    def _retain(self, rec: TaskRecord) -> None:
        self._finished.append(rec)
        if len(self._finished) > self.max_finished or self.finished_ttl is not None:
            self.prune()

    def prune(self) -> None:
        finished = self._finished
        records = self._records
        while len(finished) > self.max_finished:
            rec = finished.popleft()
            if records.get(rec.task_id) is rec:
                del records[rec.task_id]
        ttl = self.finished_ttl
        if ttl is not None and finished:
            cutoff = self._clock() - ttl
            while finished and finished[0].finished_at <= cutoff:
                rec = finished.popleft()
                if records.get(rec.task_id) is rec:
                    del records[rec.task_id]
