"""Many tasks at once: ``tm.map`` (:class:`TaskMap`) and ``tm.as_completed`` (:class:`AsCompleted`).

Neither runs a background task: a :class:`TaskMap` submits its next items
inside ``__anext__``, so what is in flight is bounded by ``max_in_flight``
and nothing happens behind the caller's back. Completion is learnt the way
watchers learn it: the registry's hub pushes each new snapshot of a watched
record to its sinks (:class:`~._task.Sink`), synchronously.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio

from ._task import TaskInfo, TaskRecord

if TYPE_CHECKING:
    from ._manager import TaskManager
    from ._options import Call, TaskOptions

log = logging.getLogger("genro_tasks")

#: How long an early exit waits, shielded, for the kill of the batch's tasks.
_CANCEL_LIMIT = 10.0


def _follow(rec: TaskRecord, sink: Any) -> None:
    """Register ``sink`` (weakly) to receive every new snapshot of ``rec``."""
    if rec.watchers is None:
        rec.watchers = weakref.WeakSet()
    rec.watchers.add(sink)


class AsCompleted:
    """Async iterator of the terminal :class:`TaskInfo` of some tasks, in the order they finish.

    Returned by :meth:`TaskManager.as_completed`. Tasks already finished
    come first (in the order given); each distinct task is yielded once.
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
                _follow(rec, self)

    def _push(self, info: TaskInfo) -> None:
        if not info.status.is_terminal:
            return
        self._ready.append(info)
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
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        return self._ready.popleft()


class TaskMap:
    """``tm.map(func, items)``: results of ``func(item)`` for every item, computed in worker processes.

    Returned by :meth:`TaskManager.map`; iterate it with ``async for`` (once).
    Items are submitted lazily: at most ``max_in_flight`` of them are
    submitted and not yet yielded, so a huge (or endless) input never
    becomes a huge number of records.

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
    ) -> None:
        assert options.group is not None
        self.group: str = options.group
        self._manager = manager
        self._options = options
        self._func = func
        self._sync_items: Iterator[Any] | None = None
        self._async_items: AsyncIterator[Any] | None = None
        if isinstance(items, AsyncIterable):
            self._async_items = aiter(items)
        else:
            self._sync_items = iter(items)
        self._ordered = ordered
        self._max_in_flight = max_in_flight
        self._return_exceptions = return_exceptions
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
                    else:
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
        try:
            return rec.outcome()
        except Exception as exc:
            if self._return_exceptions:
                return exc
            await self.aclose()
            raise

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
        while len(queue) + len(pending) < limit:
            try:
                item = next(items)
            except StopIteration:
                self._exhausted = True
                return
            rec = submit((func, (item,), {}, None, None), options)
            if ordered:
                queue.append(rec)
            else:
                pending[rec.task_id] = rec
                _follow(rec, self)

    async def _fill(self) -> None:
        """Submit items until ``max_in_flight`` are submitted and not yet yielded."""
        if self._exhausted:
            return
        manager = self._manager
        options = self._options
        func = self._func
        wait_for_room = manager._max_queued is not None
        while len(self._queue) + len(self._pending) < self._max_in_flight:
            if self._sync_items is not None:
                try:
                    item = next(self._sync_items)
                except StopIteration:
                    self._exhausted = True
                    return
            else:
                assert self._async_items is not None
                try:
                    item = await anext(self._async_items)
                except StopAsyncIteration:
                    self._exhausted = True
                    return
            call: Call = (func, (item,), {}, None, None)
            if wait_for_room:
                rec = manager._registry.get(await manager._submit_wait(call, options))
            else:
                rec = manager._submit_record(call, options)
            if self._ordered:
                self._queue.append(rec)
            else:
                self._pending[rec.task_id] = rec
                _follow(rec, self)

    async def _next_completed(self) -> TaskRecord | None:
        """Unordered: the next finished record to yield; None when every item was yielded."""
        if self._queue:
            await trio.lowlevel.checkpoint()
        while not self._queue:
            if not self._pending:
                return None
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        return self._queue.popleft()

    def _push(self, info: TaskInfo) -> None:
        """A followed task changed (unordered mode): note it once it finished."""
        if not info.status.is_terminal:
            return
        rec = self._pending.pop(info.task_id, None)
        if rec is None:
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
