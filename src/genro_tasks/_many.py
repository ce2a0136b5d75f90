"""Many tasks at once: ``tm.map`` (:class:`TaskMap`) and ``tm.as_completed`` (:class:`AsCompleted`).

Neither runs a background task: a :class:`TaskMap` submits its next items
inside ``__anext__``, so what is in flight is bounded by ``max_in_flight``
and nothing happens behind the caller's back. Completion is learnt the way
watchers learn it: the registry's hub pushes each new snapshot of a watched
record to its sinks (:class:`~._task.Sink`), synchronously.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import weakref
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio

from genro_tasks_worker._chunk import MapChunk, Outcomes
from genro_tasks_worker._protocol import Failure

from ._errors import RemoteError, UnpicklableResult
from ._task import TaskInfo, TaskRecord, TaskStatus, follow, remote_exception

if TYPE_CHECKING:
    from ._manager import TaskManager
    from ._options import Call, TaskOptions

log = logging.getLogger("genro_tasks")

#: How long an early exit waits, shielded, for the kill of the batch's tasks.
_CANCEL_LIMIT = 10.0

#: Most tasks one ``__anext__`` submits before it waits (a few milliseconds of the event loop):
#: a large ``max_in_flight`` is reached over several calls, so a huge one over an endless input
#: cannot hold the loop, and the first result comes without waiting for the whole fill.
FILL_BURST = 512

# Automatic chunk size (``chunksize=None``): chunks grow until one takes about CHUNK_SECONDS of
# the worker's time, at most GROWTH times the size last measured, and at most CHUNK_MAX items or
# CHUNK_BYTES of pickled arguments (what a chunk keeps in the parent's memory while in flight).
CHUNK_SECONDS = 0.005
CHUNK_GROWTH = 4
CHUNK_MAX = 1000
CHUNK_BYTES = 1 << 20


class AsCompleted:
    """Async iterator of the terminal :class:`TaskInfo` of some tasks, in the order they finish.

    Returned by :meth:`TaskManager.as_completed`. Tasks already finished
    come first (in the order given); each distinct task is yielded once.
    Several trio tasks may read it at once: each item goes to one of them,
    and all of them stop once every task was yielded.
    """

    def __init__(self, records: Iterable[TaskRecord]) -> None:
        self._ready: deque[TaskInfo] = deque()
        self._waiting = 0
        self._wakeup: trio.Event | None = None
        self._records: dict[str, TaskRecord] = {}  # strong references: a record may be forgotten meanwhile
        for rec in records:
            if rec.task_id in self._records:
                continue
            self._records[rec.task_id] = rec
            if rec.status.is_terminal:
                self._ready.append(rec.snapshot())
            else:
                self._waiting += 1
                follow(rec, weakref.ref(self))

    def _push(self, rec: TaskRecord) -> None:
        if not rec.status.is_terminal:
            return  # only the end is yielded: no snapshot of the other changes
        self._ready.append(rec.snapshot())
        self._waiting -= 1
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def __aiter__(self) -> AsCompleted:
        return self

    async def __anext__(self) -> TaskInfo:
        """Return the next task to finish (its terminal snapshot).

        **Cancellation:** Only the wait is cancelled; nothing is lost (the
        next call returns what finished meanwhile) and the tasks keep going.
        """
        if self._ready:
            await trio.lowlevel.checkpoint()
        while not self._ready:
            if self._waiting <= 0:
                raise StopAsyncIteration
            if self._wakeup is None:  # several readers share one wake-up: each one pushed wakes them all
                self._wakeup = trio.Event()
            await self._wakeup.wait()
        return self._ready.popleft()


class AllEnded:
    """Waits until every given task has ended, or (``fail_fast``) until one ends other than COMPLETED.

    What ``tm.gather`` waits with: it is told only that a task ended, so it
    costs no snapshot per change and no wake-up per task. ``failed`` is the
    first task found not COMPLETED: among those already ended, the first in
    the order given; else the first to end that way.
    """

    def __init__(self, records: Iterable[TaskRecord], fail_fast: bool) -> None:
        self._fail_fast = fail_fast
        self._left = 0
        self._ended = trio.Event()
        self.failed: TaskRecord | None = None
        followed: set[str] = set()
        for rec in records:
            if rec.status.is_terminal:
                if fail_fast and self.failed is None and rec.status is not TaskStatus.COMPLETED:
                    self.failed = rec
            elif rec.task_id not in followed:
                followed.add(rec.task_id)
                self._left += 1
                follow(rec, weakref.ref(self))

    def _push(self, rec: TaskRecord) -> None:
        status = rec.status
        if not status.is_terminal:
            return  # a retrying task ends with its last attempt
        self._left -= 1
        if self._fail_fast and self.failed is None and status is not TaskStatus.COMPLETED:
            self.failed = rec
        if self._left <= 0 or self.failed is not None:
            self._ended.set()

    async def wait(self) -> None:
        """Return once every task has ended, or one failed (``fail_fast``).

        **Cancellation:** Only the wait is cancelled; the tasks keep going.
        """
        if self._left > 0 and self.failed is None:
            await self._ended.wait()
        else:
            await trio.lowlevel.checkpoint()


class TaskMap:
    """``tm.map(func, items)``: results of ``func(item)`` for every item, computed in worker processes.

    Returned by :meth:`TaskManager.map`; iterate it with ``async for`` (once).
    Items are submitted lazily: at most ``max_in_flight`` of them are
    submitted and not yet yielded, so a huge (or endless) input never
    becomes a huge number of records.

    A task holds one item, or a chunk of items (``chunksize``; see
    :meth:`TaskManager.map`): a chunk's outcomes are unpacked here and yielded
    one per item, each failed item raising (or returning) its own exception.

    Leaving early hard-cancels the batch's queued and running tasks:

    * ``aclose()``, or leaving an ``async with tm.map(...) as it:`` block,
      kills them and waits (shielded) until each is recorded CANCELLED;
    * an item that fails (without ``return_exceptions``), an exception raised
      by the input iterator, or a cancellation of the caller while waiting
      for a result do the same before the exception goes through;
    * a ``break`` (or an exception in the loop's body) of a bare ``async for``
      drops the iterator: CPython finalises it at once, and its finaliser
      sends the kill synchronously (the jobs are killed before the next
      statement runs; their records become CANCELLED moments later, when the
      workers are reaped). Keep the iterator in an ``async with`` block to
      wait for that too.

    Attributes:
        group: The group of the batch's tasks (see ``tm.group_info``).
        chunksize: Items per task for the next submissions.
    """

    def __init__(
        self,
        manager: TaskManager,
        options: TaskOptions,
        func: Callable[..., Any],
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        ordered: bool,
        max_in_flight: int,
        return_exceptions: bool,
        chunksize: int | None = 1,
    ) -> None:
        assert options.group is not None
        self.group: str = options.group
        self._manager = manager
        self._options = options
        self._func = func
        self._chunk_func = MapChunk(func)
        self._sync_items: Iterator[Any] | None = None
        self._async_items: AsyncIterator[Any] | None = None
        if isinstance(items, AsyncIterable):
            self._async_items = aiter(items)
        else:
            self._sync_items = iter(items)
        self._ordered = ordered
        self._max_in_flight = max_in_flight
        self._return_exceptions = return_exceptions
        #: Items per task now; None (automatic) starts at 1 and adapts (see :meth:`_measured`).
        self._adaptive = chunksize is None
        self._chunksize = 1 if chunksize is None else chunksize
        #: The tasks that run a chunk (several items): task id -> how many items.
        self._chunks: dict[str, int] = {}
        #: Automatic size: the fastest one-item task since the last chunk measured, seconds.
        self._fastest_single: float | None = None
        #: Pickled arguments per item, as last seen (bounds a chunk's bytes).
        self._item_bytes = 1
        #: The chunk being yielded: its values, its errors, the next index, its record.
        self._values: list[Any] = []
        self._errors: dict[int, Failure | tuple[str, str]] | None = None
        self._next = 0
        self._chunk_rec: TaskRecord | None = None
        #: The chunk being yielded failed as a whole (crash, timeout, cancel...): what each item raises.
        self._chunk_error: Exception | None = None
        self._exhausted = False
        self._closed = False
        self._sync_fill = self._sync_items is not None and manager._max_queued is None
        self._shared = manager._store is not None
        self._started = False
        #: Ordered: every submitted, not yet yielded record, in input order.
        #: Unordered: the ones that finished and wait to be yielded.
        self._queue: deque[TaskRecord] = deque()
        #: Unordered: the submitted records that have not finished, by id.
        self._pending: dict[str, TaskRecord] = {}
        self._wakeup: trio.Event | None = None

    @property
    def chunksize(self) -> int:
        """Items per task for the next submissions (changes as it adapts when ``chunksize=None``)."""
        return self._chunksize

    # ------------------------------------------------------------ iteration
    def __aiter__(self) -> TaskMap:
        if self._started:
            raise RuntimeError(f"tm.map(...) of group {self.group!r} can be iterated only once")
        self._started = True
        return self

    async def __anext__(self) -> Any:
        """Return the next result (in input order, or as tasks complete with ``ordered=False``).

        Raises:
            Exception: What the item's task raised (as ``tm.result`` raises it),
                unless ``return_exceptions``; the batch's other tasks are
                cancelled first.

        **Cancellation:** If cancelled while waiting, the batch's queued and
        running tasks are hard-cancelled (shielded) before the cancellation
        goes through; the iterator is then closed.
        """
        if self._chunk_rec is not None:  # the rest of a chunk already here: no wait, no schedule point
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                await self.aclose()
                raise
            index = self._next
            if self._chunk_error is None and (self._errors is None or index not in self._errors):
                values = self._values
                self._next = index + 1
                if index + 1 == len(values):
                    self._chunk_rec = None
                    self._values = []
                return values[index]
            return await self._chunk_item()
        if self._closed:
            raise StopAsyncIteration
        try:
            if self._sync_fill:  # the usual case, without a coroutine per call
                self._fill_sync()
            else:
                await self._fill()
            if self._ordered:
                queue = self._queue
                if queue:
                    rec: TaskRecord | None = queue[0]
                    assert rec is not None
                    if rec.status.is_terminal:
                        await trio.lowlevel.checkpoint()
                    while not rec.status.is_terminal:  # (again after a wait: an operator may have requeued it)
                        await rec.wait_done()
                    queue.popleft()
                else:
                    rec = None
            else:
                rec = await self._next_completed()
        except BaseException:
            await self.aclose()
            raise
        if rec is None:
            self._closed = True
            raise StopAsyncIteration
        if self._shared:  # another process sharing the store may have run it: load its outcome
            await self._manager._registry.fetch(rec)
        if self._chunks and rec.task_id in self._chunks:
            self._open_chunk(rec)
            return await self._chunk_item()
        if self._adaptive:
            self._measured_record(rec)
        try:
            return rec.outcome()
        except Exception as exc:
            if self._return_exceptions:
                return exc
            await self.aclose()
            raise

    # --------------------------------------------------------------- chunks
    def _open_chunk(self, rec: TaskRecord) -> None:
        """Start yielding the items of the finished chunk ``rec``."""
        count = self._chunks.pop(rec.task_id)
        self._chunk_rec = rec
        self._next = 0
        try:
            outcomes: Outcomes = pickle.loads(rec.outcome())
        except Exception as exc:  # the chunk as a whole failed: each of its items raises that
            self._chunk_error = exc
            self._values = [None] * count
            self._errors = None
            return
        self._chunk_error = None
        elapsed, self._values, self._errors = outcomes
        # The outcomes are the batch's now: a retained record (max_finished) keeps none of them, so
        # the parent's memory does not grow with the number of chunks the input makes.
        # (A record API to drop a result would be better: this reaches into TaskRecord.)
        rec._result = None
        if self._adaptive:
            self._fastest_single = None
            self._measured(elapsed / count, count)

    async def _chunk_item(self) -> Any:
        """The next item of the chunk being yielded: its value, or its error raised (or returned)."""
        rec = self._chunk_rec
        assert rec is not None
        index = self._next
        self._next = index + 1
        values = self._values
        if self._next >= len(values):
            self._chunk_rec = None
            self._values = []
        errors = self._errors
        error = self._chunk_error
        if error is None and (errors is None or index not in errors):
            return values[index]
        try:
            if error is not None:
                raise error
            assert errors is not None
            raise _item_error(rec, index, errors[index])
        except Exception as exc:
            if self._return_exceptions:
                return exc
            self._chunk_rec = None
            await self.aclose()
            raise

    def _measured_record(self, rec: TaskRecord) -> None:
        """Automatic size: learn from a one-item task how long an item takes (as the parent saw it)."""
        if rec.started_at is None or rec.completed_at is None:
            return
        # The parent's clock adds the messages' delays (a loaded machine: milliseconds), never
        # removes time: the fastest item since the last chunk's own measure is the best estimate.
        seconds = (rec.completed_at - rec.started_at).total_seconds()
        if self._fastest_single is not None:
            seconds = min(seconds, self._fastest_single)
        self._fastest_single = seconds
        self._measured(seconds, 1)

    def _measured(self, per_item: float, count: int) -> None:
        """Automatic size: the next chunks take about CHUNK_SECONDS, within the bounds (see above)."""
        size = CHUNK_MAX if per_item <= 0 else int(CHUNK_SECONDS / per_item)
        size = min(size, CHUNK_GROWTH * count, CHUNK_MAX, CHUNK_BYTES // self._item_bytes)
        self._chunksize = max(1, size)

    def _submit_items(self, batch: tuple[Any, ...]) -> TaskRecord:
        """Submit one task for ``batch`` (one item: ``func(item)`` itself; more: a chunk)."""
        if len(batch) == 1:
            return self._manager._submit_record((self._func, batch, {}, None, None), self._options)
        rec = self._manager._submit_record((self._chunk_func, (batch,), {}, None, None), self._options)
        self._note_chunk(rec, len(batch))
        return rec

    def _note_chunk(self, rec: TaskRecord, count: int) -> None:
        self._chunks[rec.task_id] = count
        if rec.payload is not None:
            self._item_bytes = max(1, len(rec.payload) // count)

    def _fill_sync(self) -> None:
        """:meth:`_fill` for a plain iterable and a manager without ``max_queued``: no await needed."""
        if self._exhausted:
            return
        items = self._sync_items
        assert items is not None
        submit = self._manager._submit_record
        options = self._options
        func = self._func
        ordered = self._ordered
        queue = self._queue
        pending = self._pending
        limit = self._max_in_flight
        in_flight = len(queue) + len(pending)
        if in_flight > limit // 2:
            return  # refill in bursts: the scheduler's queue stays fed, workers are not woken one job at a time
        for _ in range(min(limit - in_flight, FILL_BURST)):
            if self._chunksize == 1:
                try:
                    item = next(items)
                except StopIteration:
                    self._exhausted = True
                    return
                rec = submit((func, (item,), {}, None, None), options)
            else:
                batch = tuple(itertools.islice(items, self._chunksize))
                if not batch:
                    self._exhausted = True
                    return
                rec = self._submit_items(batch)
            if ordered:
                queue.append(rec)
            else:
                pending[rec.task_id] = rec
                follow(rec, weakref.ref(self))

    async def _fill(self) -> None:
        """Submit items until ``max_in_flight`` tasks are submitted and not yet yielded (``FILL_BURST`` at most)."""
        if self._exhausted:
            return
        manager = self._manager
        options = self._options
        wait_for_room = manager._max_queued is not None
        for _ in range(min(self._max_in_flight - len(self._queue) - len(self._pending), FILL_BURST)):
            batch = await self._take(self._chunksize)
            if not batch:
                self._exhausted = True
                return
            if wait_for_room:
                if len(batch) == 1:
                    call: Call = (self._func, batch, {}, None, None)
                else:
                    call = (self._chunk_func, (batch,), {}, None, None)
                rec = manager._registry.get(await manager._submit_wait(call, options))
                if len(batch) > 1:
                    self._note_chunk(rec, len(batch))
            else:
                rec = self._submit_items(batch)
            if self._ordered:
                self._queue.append(rec)
            else:
                self._pending[rec.task_id] = rec
                follow(rec, weakref.ref(self))

    async def _take(self, count: int) -> tuple[Any, ...]:
        """Up to ``count`` next items of the input (fewer at its end)."""
        if self._sync_items is not None:
            return tuple(itertools.islice(self._sync_items, count))
        assert self._async_items is not None
        batch: list[Any] = []
        while len(batch) < count:
            try:
                batch.append(await anext(self._async_items))
            except StopAsyncIteration:
                break
        return tuple(batch)

    async def _next_completed(self) -> TaskRecord | None:
        """Unordered: the next finished record to yield; None when every item was yielded."""
        if self._queue:
            await trio.lowlevel.checkpoint()
        while True:
            while not self._queue:
                if not self._pending:
                    return None
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            rec = self._queue[0]
            if rec.status.is_terminal:
                return self._queue.popleft()
            # An operator requeued it after it finished: yield how its new attempt ends (kept in the
            # queue meanwhile, so that leaving early cancels it too).
            await rec.wait_done()

    def _push(self, rec: TaskRecord) -> None:
        """A followed task changed (unordered mode): note it once it finished."""
        if not rec.status.is_terminal or self._pending.pop(rec.task_id, None) is None:
            return
        self._queue.append(rec)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    # --------------------------------------------------------------- ending
    def _unfinished(self) -> list[TaskRecord]:
        """Forget the batch's records and return the ones not finished (queued first, so none gets a slot)."""
        records = [rec for rec in (*self._queue, *self._pending.values()) if not rec.status.is_terminal]
        self._queue.clear()
        self._pending.clear()
        records.sort(key=lambda rec: rec.started_at is not None)
        return records

    async def aclose(self) -> None:
        """Stop: hard-cancel the batch's queued and running tasks and wait until each is CANCELLED.

        Items not submitted yet never will be. Calling it again does nothing.

        **Cancellation:** Shielded: the kill and the wait for it complete
        (within 10 s) even if the caller is cancelled.
        """
        self._closed = True
        self._exhausted = True
        self._chunk_rec = None
        records = self._unfinished()
        if not records:
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope(shield=True), trio.move_on_after(_CANCEL_LIMIT):
            await self._manager._cancel_records(records)

    def __del__(self) -> None:
        # A bare ``async for`` left by break: kill what is left now (see the class docstring).
        if self._closed or not (self._queue or self._pending):
            return
        self._closed = True
        records = self._unfinished()
        try:
            # Synchronous and free of awaits: it only asks the scheduler for the kills, which is
            # safe from any point of the trio thread (each cancel is one atomic transition).
            self._manager._kill_records(records)
        except Exception:  # outside the trio run, or the manager is gone: its shutdown killed them
            log.debug("tm.map of group %r dropped outside its trio run", self.group, exc_info=True)

    async def __aenter__(self) -> TaskMap:
        """Return the iterator.

        **Cancellation:** Nothing to cancel: it does not wait.
        """
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close it (see :meth:`aclose`): nothing of the batch is left running.

        **Cancellation:** As :meth:`aclose`: shielded.
        """
        await self.aclose()


def _item_error(rec: TaskRecord, index: int, error: Failure | tuple[str, str]) -> Exception:
    """The exception item ``index`` of chunk ``rec`` ended with (what a one-item task would raise)."""
    if isinstance(error, tuple):
        type_name, why = error
        return UnpicklableResult(
            f"Task {rec.task_id!r} ({rec.name}), item {index} of its chunk, returned a {type_name} that cannot be "
            f"pickled ({why}); return plain data instead, e.g. write it to a file and return the path"
        )
    remote = remote_exception(error)
    if isinstance(remote, Exception):
        return remote
    return RemoteError(error.type_name, error.message, error.traceback)
