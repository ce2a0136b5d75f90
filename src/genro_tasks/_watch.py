"""Live views of tasks: one task's snapshots (:class:`TaskWatcher`) and every
task's changes (:class:`ChangeStream`).

Both are fed synchronously by the change hub (:mod:`._registry`) when the
scheduler records a change, never block the scheduler, and keep bounded memory however slowly
they are read. Registrations are weak: an iterator you drop (for example by
leaving an ``async for`` early) unregisters itself as soon as it is garbage.
"""

from __future__ import annotations

from collections import OrderedDict
from types import TracebackType

import trio

from ._task import TaskInfo, TaskRecord
from ._validate import check_count


class TaskWatcher:
    """Async iterator of one task's :class:`TaskInfo` snapshots.

    Yields the current snapshot at once, then one per change, and stops after
    the terminal snapshot. If you read slowly, consecutive snapshots with the
    same status are merged (you see the newest progress), so you may skip
    intermediate progress values but never a status change or the final
    snapshot. At most one snapshot per status is ever buffered.
    """

    def __init__(self, rec: TaskRecord) -> None:
        self._pending: list[TaskInfo] = [rec.snapshot()]
        self._wakeup: trio.Event | None = None
        self._finished = False
        self._closed = False

    def _push(self, rec: TaskRecord) -> None:
        info = rec.snapshot()
        pending = self._pending
        if pending and pending[-1].status is info.status:
            pending[-1] = info
        else:
            pending.append(info)
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def __aiter__(self) -> TaskWatcher:
        return self

    async def __anext__(self) -> TaskInfo:
        """Return the next snapshot.

        **Cancellation:** Cancelling the wait loses nothing: the next call
        returns what arrived meanwhile. The task itself is not affected.
        """
        if self._finished or self._closed:
            raise StopAsyncIteration
        if self._pending:
            await trio.lowlevel.checkpoint()
        # Another reader may take a snapshot (or close the watcher) meanwhile: check again after each wait.
        while not self._pending or self._closed:
            if self._finished or self._closed:
                raise StopAsyncIteration
            if self._wakeup is None:  # several readers share one wake-up
                self._wakeup = trio.Event()
            await self._wakeup.wait()
        info = self._pending.pop(0)
        if info.status.is_terminal:
            self._finished = True
        return info

    async def aclose(self) -> None:
        """Stop watching; the iterator ends (a read waiting on it too). Dropping it has the same effect.

        **Cancellation:** A checkpoint only; the watcher is closed either way.
        """
        self._closed = True
        if self._wakeup is not None:  # a reader waiting for the next snapshot ends too
            self._wakeup.set()
            self._wakeup = None
        await trio.lowlevel.checkpoint()


class ChangeStream:
    """Async iterator of :class:`TaskInfo` for every change of every task.

    Use it as ``async with tm.open_change_stream() as changes: async for info
    in changes: ...``. Newest state wins: while you are not reading, the
    stream keeps only the latest snapshot of each changed task, in order of
    their first unread change, so a stalled reader never blocks the
    scheduler. If more than ``max_pending`` distinct tasks pile up unread,
    the oldest are dropped and counted in :attr:`dropped`.
    """

    def __init__(self, max_pending: int) -> None:
        check_count("max_pending", max_pending, allow_none=False)
        self._max_pending = max_pending
        self._pending: OrderedDict[str, TaskRecord] = OrderedDict()
        self._wakeup: trio.Event | None = None
        self._closed = False
        #: How many unread changes were dropped because of ``max_pending``.
        self.dropped = 0

    def _push(self, rec: TaskRecord) -> None:
        pending = self._pending
        if rec.task_id not in pending:
            pending[rec.task_id] = rec
            if len(pending) > self._max_pending:
                pending.popitem(last=False)
                self.dropped += 1
        else:
            pending[rec.task_id] = rec
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> TaskInfo:
        """Return the next change, waiting for one if needed.

        **Cancellation:** Cancelling the wait loses nothing.
        """
        if self._pending:
            await trio.lowlevel.checkpoint()
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            if self._wakeup is None:  # several readers share one wake-up: close() ends them all
                self._wakeup = trio.Event()
            await self._wakeup.wait()
        if self._closed:
            raise StopAsyncIteration
        _, rec = self._pending.popitem(last=False)
        return rec.snapshot()

    def close(self) -> None:
        """End the stream: pending and future ``__anext__`` calls stop iterating."""
        self._closed = True
        self._pending.clear()
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def __aenter__(self) -> ChangeStream:
        """Return the stream (already subscribed).

        **Cancellation:** Nothing to cancel: it does not wait.
        """
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the stream.

        **Cancellation:** Nothing to cancel: it does not wait.
        """
        self.close()
