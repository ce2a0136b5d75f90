"""The scheduler: the queue, the deadlines and the task state machine.

It owns every task's life after ``submit``: the dispatch queue (higher
priority first, FIFO among equals: one lane per priority, see :class:`RunQueue`), the jobs in flight on the
backend, their deadlines (a timeout counts from RUNNING; a graceful cancel
has a grace period), and every transition PENDING → RUNNING → exactly one of
COMPLETED / FAILED / CANCELLED. It knows *why* it asked the backend to kill a
job (cancel, timeout, shutdown), so when the backend reports the job
:meth:`lost <Scheduler.lost>` it alone decides what that death means: a task
lost before it started is sent again (up to :data:`MAX_REQUEUES` times), a
killed task is CANCELLED or FAILED with TaskTimeout, anything else is FAILED
with WorkerCrashed. Every failure goes through :meth:`Scheduler._fail`, the
one place that decides whether a task with ``retries`` starts its next
attempt (PENDING again, after its back-off) instead of ending FAILED.

It knows no process, pid or descriptor: it talks to an
:class:`~._backend.ExecutionBackend` and is unit-testable with
:class:`genro_tasks.testing.FakeBackend`. Transitions are synchronous
methods that never await halfway; they run with KeyboardInterrupt
protection, so a Ctrl-C never lands inside one (trio delivers it to the
application's main task, which then shuts the manager down).
"""

from __future__ import annotations

import enum
import heapq
import logging
import math
from bisect import bisect
from collections import deque
from collections.abc import Callable, Iterable

import trio
from trio.lowlevel import enable_ki_protection

from genro_tasks_worker._protocol import Failure

from ._backend import (
    BackendListener,
    ExecutionBackend,
    Lost,
    Outcome,
    Raised,
    Returned,
    TooLarge,
    Undecodable,
    Unreturnable,
)
from ._errors import (
    ManagerClosed,
    MemoryLimitExceeded,
    MessageTooLarge,
    SupervisorFailed,
    TaskTimeout,
    UnpicklableResult,
    WorkerCrashed,
)
from ._task import TaskRecord, TaskStatus, error_text, remote_exception
from ._util import describe, only_cancelled, root_cause

log = logging.getLogger("genro_tasks")


class RunQueue:
    """Sequence numbers of queued tasks: the highest priority first, the oldest (lowest seq) first among equals.

    One FIFO lane per priority in use, and a small heap of those priorities: taking the
    next task is a ``popleft``, not a heap pop whose cost (and cache misses) grows with
    the number queued. A task that comes back with an older seq (requeued after its
    worker died before starting it, or after a retry back-off) takes its place by seq.
    It may hold stale seqs (tasks cancelled while queued): the caller skips them.
    """

    __slots__ = ("_lanes", "_len", "_priorities")

    def __init__(self, items: Iterable[tuple[int, int]] = ()) -> None:
        self._lanes: dict[int, deque[int]] = {}
        #: The negated priorities that have a lane (a heap: the highest priority on top).
        self._priorities: list[int] = []
        self._len = 0
        for priority, seq in sorted(items, key=lambda item: item[1]):
            self.push(priority, seq)

    def push(self, priority: int, seq: int) -> None:
        lane = self._lanes.get(priority)
        if lane is None:
            self._lanes[priority] = deque((seq,))
            heapq.heappush(self._priorities, -priority)
        elif lane[-1] < seq:
            lane.append(seq)
        else:  # an older task back in the queue: its place among its elders
            lane.insert(bisect(lane, seq), seq)
        self._len += 1

    def pop(self) -> int:
        """The next seq (the queue must not be empty)."""
        priority = -self._priorities[0]
        lane = self._lanes[priority]
        seq = lane.popleft()
        if not lane:
            del self._lanes[priority]
            heapq.heappop(self._priorities)
        self._len -= 1
        return seq

    def clear(self) -> None:
        self._lanes.clear()
        self._priorities.clear()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0


#: How often a task whose worker died before starting it is sent again.
MAX_REQUEUES = 3
#: How long a graceful stop waits for the workers to exit.
STOP_GRACE = 5.0
#: Safety net: how long ``stop`` waits for the scheduler's task to end.
_FINISH_LIMIT = 15.0


class Lifecycle(enum.Enum):
    """Where the scheduler is in its life (it only moves down this list, or to FAILED)."""

    STARTING = "starting"  # workers starting; tasks are accepted and queued
    RUNNING = "running"
    DRAINING = "draining"  # shutdown(): no new tasks; the ones in flight settle
    STOPPING = "stopping"  # every task settled; the workers are stopping
    STOPPED = "stopped"
    FAILED = "failed"  # our own code broke: every task failed, nothing accepted


class KillReason(enum.Enum):
    """Why the scheduler asked the backend to kill a job."""

    CANCEL = "cancelled by the caller"
    TIMEOUT = "task timeout"
    SHUTDOWN = "cancelled by shutdown"


class Scheduler(BackendListener):
    """Queue, deadlines and transitions of one TaskManager's tasks.

    Args:
        backend: What runs the jobs.
        on_change: Called after every change of a task (with its record) and
            of the pool (with None); it must not await.
        on_room: Called when a queued task leaves the queue.
        on_end: Called once the scheduler has ended (nothing changes any more).
        on_idle: Called after a dispatch round that may have left free
            workers (a shared store then claims tasks for them); it must not await.
        give_back: Takes back a task a shutdown's kill stopped before it
            started (a shared store queues it again for other processes);
            None: such a task is CANCELLED by the shutdown. It must not await.
    """

    def __init__(
        self,
        backend: ExecutionBackend,
        on_change: Callable[[TaskRecord | None], None],
        on_room: Callable[[], None] = lambda: None,
        on_end: Callable[[], None] = lambda: None,
        on_idle: Callable[[], None] | None = None,
        give_back: Callable[[TaskRecord], None] | None = None,
    ) -> None:
        self.backend = backend
        self._on_idle = on_idle
        self._give_back = give_back
        self._on_change = on_change
        self._on_room = on_room
        self._on_end = on_end
        self.lifecycle = Lifecycle.STARTING
        #: Why the scheduler failed (lifecycle FAILED).
        self.failure: BaseException | None = None
        #: The last worker start failure, until a worker starts fine again.
        self.start_error: BaseException | None = None
        # The queue holds only seqs (plain ints); the records live in _queued, keyed by seq.
        self._queue = RunQueue()
        self._queued: dict[int, TaskRecord] = {}
        # The jobs handed to the backend ("flights"), and what little state some of them carry
        # (kept in separate maps, so the usual job costs no allocation):
        self._flights: dict[int, TaskRecord] = {}
        #: Why the scheduler asked the backend to kill a job (the first reason wins).
        self._kill_reasons: dict[int, KillReason] = {}
        #: trio time at which a RUNNING job with a timeout is killed.
        self._timeouts: dict[int, float] = {}
        #: trio time at which a gracefully cancelled job is killed (present: CancelRequested was sent).
        self._graces: dict[int, float] = {}
        #: Tasks waiting out their retry back-off: seq -> (trio time to queue it again, record).
        self._backoff: dict[int, tuple[float, TaskRecord]] = {}
        self._timer: trio.CancelScope | None = None
        #: Shielded, so the backend is stopped only after the scheduler marked its jobs.
        self._backend_scope = trio.CancelScope(shield=True)
        self._ready = trio.Event()
        self._startup_error: BaseException | None = None
        self._drained = trio.Event()
        self._stop = trio.Event()
        self.finished = trio.Event()

    # ------------------------------------------------------------------ running
    @property
    def accepting(self) -> bool:
        """True while new tasks may be queued."""
        return self.lifecycle is Lifecycle.STARTING or self.lifecycle is Lifecycle.RUNNING

    @enable_ki_protection
    async def run(self) -> None:
        """Body of the scheduler's task (a trio system task): the backend and the deadlines.

        Returns once :meth:`stop` (or a failure) ended it; every job still in
        flight then ends CANCELLED by shutdown and every worker is dead.

        **Cancellation:** Cancelling it (the end of the trio run) stops it the
        same way: the backend kills and reaps its workers, shielded, first.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_backend)
                nursery.start_soon(self._enforce_deadlines)
                try:
                    await self._stop.wait()
                finally:
                    # Whatever ends us, the jobs still in flight end by shutdown.
                    for key in self._flights:
                        self._kill_reasons.setdefault(key, KillReason.SHUTDOWN)
                    self._backend_scope.cancel()
                    nursery.cancel_scope.cancel()
        except BaseException as exc:
            if only_cancelled(exc):
                raise
            # A system task must never crash the application: fail loudly, but here.
            self.failed(exc)
        finally:
            if self.lifecycle is not Lifecycle.FAILED:
                self.lifecycle = Lifecycle.STOPPED
            self._end_queued(lambda rec: rec.finish_cancelled("cancelled by shutdown"))
            self._release_startup("the TaskManager was shut down while it was starting")
            self.finished.set()
            self._on_end()

    @enable_ki_protection
    async def _serve_backend(self) -> None:
        """Run the backend until ``run`` ends it (after marking why the jobs in flight die)."""
        with self._backend_scope:
            await self.backend.serve(self)

    async def wait_started(self) -> None:
        """Wait until every initial worker is ready (or raise why not).

        **Cancellation:** Only the wait is cancelled.
        """
        await self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def _release_startup(self, why: str) -> None:
        """Never leave a startup waiting: fail it if the workers will not all be ready."""
        if not self._ready.is_set():
            if self._startup_error is None:
                self._startup_error = ManagerClosed(why)
            self._ready.set()

    async def stop(self, wait: bool, cancel_pending: bool) -> None:
        """Stop accepting, settle every task as asked, stop the workers, end the scheduler.

        Idempotent.

        **Cancellation:** If cancelled while tasks settle, every job is killed
        (shielded) before the cancellation goes through.
        """
        if self.accepting:
            self.lifecycle = Lifecycle.DRAINING
        self._release_startup("the TaskManager was shut down while it was starting")
        try:
            if cancel_pending or not wait:
                self._end_queued(lambda rec: rec.finish_cancelled("cancelled by shutdown"))
                for key, rec in list(self._flights.items()):
                    if rec.status is TaskStatus.PENDING:  # held by a worker, not started: taken back
                        self._kill(key, KillReason.SHUTDOWN)
            if not wait:
                self._kill_all(KillReason.SHUTDOWN)
            self._check_drained()
            await self._drained.wait()
            if self.lifecycle is Lifecycle.DRAINING:
                self.lifecycle = Lifecycle.STOPPING
            self.backend.begin_stop()
            with trio.move_on_after(STOP_GRACE):
                await self.backend.wait_stopped()
        finally:
            if self.lifecycle is Lifecycle.DRAINING:
                self.lifecycle = Lifecycle.STOPPING
            self._stop.set()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(_FINISH_LIMIT) as stuck:
                    await self.finished.wait()
                if stuck.cancelled_caught:  # pragma: no cover - a bug; never hang the caller
                    log.critical("genro_tasks scheduler did not stop in time; giving up on it")

    # ---------------------------------------------------------------- the queue
    @enable_ki_protection
    def enqueue(self, rec: TaskRecord, dispatch: bool = True) -> None:
        """Queue a new (or lost, never started) task and dispatch what can run.

        With ``dispatch=False`` (queueing many at once), call :meth:`dispatch` after the last.
        """
        self._queue.push(rec.priority, rec.seq)
        self._queued[rec.seq] = rec
        if self._drained.is_set():
            self._drained = trio.Event()
        if dispatch:
            self._dispatch()

    @enable_ki_protection
    def dispatch(self) -> None:
        """Hand queued jobs to the backend while it has room (after ``enqueue(..., dispatch=False)``)."""
        self._dispatch()

    @property
    def queued(self) -> int:
        """Tasks waiting in the queue, or held by a worker behind the job it runs (not started)."""
        return len(self._queued) + self.backend.held_ahead()

    @property
    def running(self) -> int:
        """Tasks RUNNING on the backend."""
        return sum(1 for rec in self._flights.values() if rec.status is TaskStatus.RUNNING)

    def _dispatch(self) -> None:
        """Hand queued jobs to the backend while it has room."""
        queue = self._queue
        queued = self._queued
        backend = self.backend
        if not queue or self.lifecycle is Lifecycle.FAILED:
            if self._on_idle is not None and self.lifecycle is not Lifecycle.FAILED:
                self._on_idle()
            return
        free = backend.free_slots()
        left = False
        while free > 0 and queue:
            rec = queued.pop(queue.pop(), None)
            if rec is None:
                continue  # cancelled while queued
            left = True
            self._flights[rec.seq] = rec
            assert rec.payload is not None
            backend.dispatch(rec.seq, rec.payload)
            free -= 1
        if left:
            self._on_room()
        if self._on_idle is not None:
            self._on_idle()

    def give_back_queued(self) -> list[TaskRecord]:
        """Stop accepting tasks and empty the queue without ending its tasks; return them.

        For a shared store at shutdown: the tasks go back to the store's queue, for other processes,
        with those waiting out a retry back-off (queued too: PENDING, for their next attempt) and
        those a worker holds behind the job it runs, taken back (they never start here).
        """
        if self.accepting:
            self.lifecycle = Lifecycle.DRAINING
        taken = list(self._queued.values())
        self._queue.clear()
        self._queued.clear()
        if self._backoff:
            taken.extend(rec for _when, rec in self._backoff.values())
            self._backoff.clear()
            self._rearm()
        for key, rec in list(self._flights.items()):  # held by a worker behind another job: not started
            if rec.status is TaskStatus.PENDING and key not in self._kill_reasons and self.backend.take_back(key):
                del self._flights[key]
                taken.append(rec)
        if taken:
            self._on_room()
            self._check_drained()
        return taken

    @enable_ki_protection
    def take_back_waiting(self, count: int) -> list[TaskRecord]:
        """Take up to ``count`` tasks that wait here without having started, least urgent first; return them.

        For a shared store, whose queue another process's idle worker may serve
        sooner: queued tasks first (lowest priority, newest first), then those a
        worker holds behind the job it runs. Each stays PENDING; the caller puts
        it back in the store's queue.
        """
        if count <= 0 or self.lifecycle is not Lifecycle.RUNNING:
            return []
        taken = sorted(self._queued.values(), key=lambda rec: (rec.priority, -rec.seq))[:count]
        for rec in taken:
            del self._queued[rec.seq]
        if len(taken) < count:
            held = [
                (key, rec)
                for key, rec in self._flights.items()
                if rec.status is TaskStatus.PENDING and key not in self._kill_reasons
            ]
            held.sort(key=lambda item: (item[1].priority, -item[1].seq))
            for key, rec in held:
                if len(taken) == count:
                    break
                if self.backend.take_back(key):
                    del self._flights[key]
                    taken.append(rec)
        if taken:
            if len(self._queue) > 2 * len(self._queued) + 64:  # too many stale entries: compact
                self._queue = RunQueue((r.priority, r.seq) for r in self._queued.values())
            self._on_room()
        return taken

    def _end_queued(self, finish: Callable[[TaskRecord], None]) -> None:
        """Give every queued task (and every one waiting to retry) its terminal state with ``finish``."""
        if not self._queued and not self._backoff:
            return
        ended = list(self._queued.values())
        ended.extend(rec for _when, rec in self._backoff.values())
        self._queue.clear()
        self._queued.clear()
        if self._backoff:
            self._backoff.clear()
            self._rearm()
        for rec in ended:
            finish(rec)
            self._on_change(rec)
        self._on_room()
        self._check_drained()

    def _check_drained(self) -> None:
        if not self._queued and not self._flights and not self._backoff:
            self._drained.set()

    # ------------------------------------------------------------------- cancel
    @enable_ki_protection
    def cancel(self, rec: TaskRecord, grace: float | None = None) -> None:
        """Start cancelling ``rec``; the caller then waits for it to be terminal.

        A queued task is CANCELLED at once. A task on the backend is killed:
        one not started yet is taken back by the backend (reported lost at
        once, it never starts), a running one is recorded CANCELLED once its
        worker is dead. With ``grace``, a RUNNING job is first asked to stop
        and killed only if it has not ended ``grace`` seconds later.
        """
        if rec.status.is_terminal:
            return
        key = rec.seq
        if key not in self._flights:
            if self._queued.pop(key, None) is None and self._backoff.pop(key, None) is None:  # pragma: no cover
                return
            if len(self._queue) > 2 * len(self._queued) + 64:  # too many stale entries: compact
                self._queue = RunQueue((r.priority, r.seq) for r in self._queued.values())
            rec.finish_cancelled("cancelled while queued")
            log.debug("task %r cancelled while queued", rec.task_id)
            self._on_change(rec)
            self._on_room()
            self._check_drained()
            return
        if grace is not None and rec.status is TaskStatus.RUNNING and key not in self._kill_reasons:
            if key not in self._graces:
                log.debug("cancelling task %r gracefully (%gs)", rec.task_id, grace)
                self._graces[key] = trio.current_time() + grace
                self.backend.interrupt(key)
                self._rearm()
            return
        self._kill(key, KillReason.CANCEL)

    def _kill(self, key: int, reason: KillReason) -> None:
        """Ask the backend to kill job ``key``, remembering why (the first reason wins)."""
        if key in self._kill_reasons:
            return
        self._kill_reasons[key] = reason
        log.debug("killing task %r (%s)", self._flights[key].task_id, reason.value)
        self.backend.kill(key)

    def kill_requested(self, key: int) -> bool:
        """Whether the kill of job ``key`` was asked and its death not yet reported."""
        return key in self._kill_reasons

    def _kill_all(self, reason: KillReason) -> None:
        for key in list(self._flights):
            self._kill(key, reason)

    # ---------------------------------------------------------------- deadlines
    @enable_ki_protection
    async def _enforce_deadlines(self) -> None:
        """Kill jobs past their timeout or grace period (one timer for all of them)."""
        while True:
            with trio.CancelScope(deadline=self._next_deadline()) as self._timer:
                await trio.sleep_forever()
            now = trio.current_time()
            for key, when in list(self._graces.items()):
                if when <= now and key not in self._kill_reasons:
                    log.info("task %r: grace period over; killing it", self._flights[key].task_id)
                    self._kill(key, KillReason.CANCEL)
            for key, when in list(self._timeouts.items()):
                if when <= now and key not in self._kill_reasons:
                    rec = self._flights[key]
                    log.info("task %r exceeded its timeout of %gs", rec.task_id, rec.timeout)
                    self._kill(key, KillReason.TIMEOUT)
            for key, (when, rec) in list(self._backoff.items()):
                if when <= now:
                    del self._backoff[key]
                    log.debug("task %r: back-off over; queueing attempt %d", rec.task_id, rec.attempt)
                    self.enqueue(rec)

    def _next_deadline(self) -> float:
        killing = self._kill_reasons
        deadline = math.inf
        for deadlines in (self._graces, self._timeouts):
            for key, when in deadlines.items():
                if when < deadline and key not in killing:
                    deadline = when
        for when, _rec in self._backoff.values():
            deadline = min(deadline, when)
        return deadline

    def _forget(self, key: int) -> tuple[KillReason | None, bool]:
        """Drop a settled job's state; return why it was killed (if asked) and whether it was cancelled gracefully."""
        reason = self._kill_reasons.pop(key, None) if self._kill_reasons else None
        graceful = False
        rearm = False
        if self._graces and self._graces.pop(key, None) is not None:
            graceful = rearm = True
        if self._timeouts and self._timeouts.pop(key, None) is not None:
            rearm = True
        if rearm:
            self._rearm()
        return reason, graceful

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.deadline = self._next_deadline()

    # ------------------------------------------------- what the backend reports
    @enable_ki_protection
    def started(self, key: int, worker: int) -> None:
        rec = self._flights.get(key)
        if rec is None:
            return  # settled already (the scheduler failed)
        self._on_room()  # it may have been held ahead (queued) by its worker
        rec.set_running(worker)
        if rec.timeout is not None:
            self._timeouts[key] = trio.current_time() + rec.timeout
            self._rearm()
        log.debug("task %r running in worker %d", rec.task_id, worker)
        self._on_change(rec)

    @enable_ki_protection
    def progress(self, key: int, fraction: float | None, message: str | None) -> None:
        rec = self._flights.get(key)
        if rec is None:
            return
        rec.set_progress(fraction, message)
        self._on_change(rec)

    @enable_ki_protection
    def done(self, key: int, outcome: Outcome) -> None:
        rec = self._flights.pop(key, None)
        if rec is None:
            return
        reason, graceful = self._forget(key)
        if type(outcome) is Returned:
            rec.finish_ok(outcome.value)
        elif isinstance(outcome, Raised):
            failure = outcome.failure
            # The attempt ended on its own while its kill was asked: a cancel still stops further attempts.
            may_retry = reason is not KillReason.CANCEL
            if graceful:
                rec.finish_cancelled(f"cancelled gracefully; the job ended with {failure.type_name}: {failure.message}")
            elif failure.type_name == "MemoryError" and rec.memory_limit is not None:
                over = MemoryLimitExceeded(rec.task_id, rec.memory_limit, failure.traceback)
                self._fail(rec, over, may_retry and self._retry_on_matches(rec, over))
            else:
                self._fail(rec, failure, may_retry and self._retry_on_matches(rec, failure))
        elif isinstance(outcome, TooLarge):
            rec.finish_failed(MessageTooLarge(rec.task_id, outcome.what, outcome.size, outcome.limit))
        elif isinstance(outcome, Unreturnable):
            rec.finish_failed(
                UnpicklableResult(
                    f"Task {rec.task_id!r} ({rec.name}) returned a {outcome.type_name} that cannot be pickled "
                    f"({outcome.why}); return plain data instead, e.g. write it to a file and return the path"
                )
            )
        else:
            assert isinstance(outcome, Undecodable)
            exc = outcome.error
            error = UnpicklableResult(
                f"Task {rec.task_id!r} ({rec.name}) returned a value that cannot be unpickled in this "
                f"process: {describe(exc)}; return plain data, or make the value's class importable here"
            )
            error.__cause__ = exc if isinstance(exc, Exception) else None
            rec.finish_failed(error)
        log.debug("task %r %s", rec.task_id, rec.status.value)
        self._on_change(rec)
        self._dispatch()
        self._check_drained()

    @enable_ki_protection
    def lost(self, key: int, lost: Lost) -> None:
        rec = self._flights.pop(key, None)
        if rec is None:
            return  # already settled (the scheduler failed)
        reason, _graceful = self._forget(key)
        if rec.status is TaskStatus.PENDING:
            self._on_room()  # it may have been held ahead (queued) by its worker
        if reason is KillReason.CANCEL:
            if lost.retryable and rec.status is TaskStatus.PENDING:
                rec.finish_cancelled("cancelled while queued")  # it never started (taken back from its worker)
            else:
                rec.finish_cancelled(f"cancelled by the caller; worker {lost.worker} was killed")
        elif reason is KillReason.SHUTDOWN:
            if lost.retryable and rec.status is TaskStatus.PENDING and self._give_back is not None:
                # It never started (sent to a worker that never said STARTED): back to the shared queue.
                self._give_back(rec)
                self._check_drained()
                return
            rec.finish_cancelled("cancelled by shutdown")
        elif reason is KillReason.TIMEOUT:
            assert rec.timeout is not None
            timed_out = TaskTimeout(rec.task_id, rec.timeout)
            self._fail(rec, timed_out, self._retry_on_matches(rec, timed_out))
        elif (
            lost.given_back
            and rec.status is TaskStatus.PENDING
            and self.lifecycle in (Lifecycle.STARTING, Lifecycle.RUNNING, Lifecycle.DRAINING)
        ):
            self.enqueue(rec)  # taken back from a worker that held too much: queued again, in priority order
            self._check_drained()
            return
        elif (
            lost.retryable
            and rec.status is TaskStatus.PENDING
            and rec.requeues < MAX_REQUEUES
            and self.lifecycle in (Lifecycle.STARTING, Lifecycle.RUNNING, Lifecycle.DRAINING)
        ):
            # Its worker died before it even unpacked the job: send it elsewhere.
            log.warning("worker %s died before starting task %r; requeueing it", lost.worker, rec.task_id)
            rec.requeues += 1
            self.enqueue(rec)
            self._check_drained()
            return
        else:
            crash = WorkerCrashed(rec.task_id, lost.worker, lost.exitcode, lost.detail)
            log.warning("%s", crash)
            self._fail(rec, crash, rec.options is not None and rec.options.retry_on_crash)
        self._on_change(rec)
        self._check_drained()

    def _fail(self, rec: TaskRecord, error: BaseException | Failure, retry_on: bool) -> None:
        """An attempt failed with ``error``: retry it (``retry_on``: the error is one to retry) or end FAILED.

        The one place a retry is decided: a task with retries left goes back
        to PENDING as its next attempt, queued at once or after its back-off.
        """
        options = rec.options
        if (
            not retry_on
            or options is None
            or rec.retries_left <= 0
            or not self.accepting  # a shutdown ends retries: this attempt's failure is final
        ):
            rec.finish_error(error)
            return
        delay = options.retry_delay(rec.attempt)
        log.info("task %r attempt %d failed (%s); retrying in %gs", rec.task_id, rec.attempt, error_text(error), delay)
        rec.retries_left -= 1
        rec.new_attempt(error_text(error))
        if delay > 0:
            self._backoff[rec.seq] = (trio.current_time() + delay, rec)
            self._rearm()
        else:
            self.enqueue(rec)

    @staticmethod
    def _retry_on_matches(rec: TaskRecord, error: BaseException | Failure) -> bool:
        """Whether ``error`` (what the job raised, or how it overran its limits) is in the task's ``retry_on``."""
        options = rec.options
        if options is None or rec.retries_left <= 0:
            return False
        exc: object = error
        names: set[str] = set()
        if isinstance(error, Failure):
            names.add(error.type_name)
            exc = remote_exception(error)  # None: the error is matched by its name alone
        if isinstance(exc, BaseException):
            names.update(f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__)
        names.update([name.rpartition(".")[2] for name in names])
        for wanted in options.retry_on:
            if isinstance(wanted, str):
                if wanted in names:
                    return True
            elif isinstance(exc, wanted):
                return True
        return False

    @enable_ki_protection
    def requeue(self, rec: TaskRecord) -> None:
        """An operator asked to run a finished task again: its next attempt, same id, queued now."""
        if not rec.status.is_terminal:  # pragma: no cover - the facade checks
            raise AssertionError(f"task {rec.task_id!r} is {rec.status.value}")
        rec.requeue()
        self.enqueue(rec)
        self._on_change(rec)

    @enable_ki_protection
    def capacity_changed(self) -> None:
        if self.start_error is not None and self.backend.free_slots() > 0:
            self.start_error = None
        self._dispatch()
        self._on_change(None)

    @enable_ki_protection
    def all_ready(self) -> None:
        if self.lifecycle is Lifecycle.STARTING:
            self.lifecycle = Lifecycle.RUNNING
        self._ready.set()

    @enable_ki_protection
    def start_failed(self, error: BaseException, none_left: bool) -> None:
        self.start_error = error
        if not self._ready.is_set():
            self._startup_error = error
            self._ready.set()
        if none_left:
            # No worker can run anything now: tell the queued tasks, not never.
            for_task = getattr(error, "for_task", None)
            self._end_queued(lambda rec: rec.finish_failed(for_task(rec.task_id) if for_task else error))

    @enable_ki_protection
    def failed(self, error: BaseException) -> None:
        """Our own code broke: fail every task in flight and queued, refuse new work, kill the workers."""
        if self.failure is not None:
            return
        log.critical("genro_tasks scheduler failed; failing all tasks", exc_info=error)
        self.failure = error
        self.lifecycle = Lifecycle.FAILED
        root = root_cause(error)
        failure = SupervisorFailed(
            f"the task supervisor failed: {type(root).__name__}: {root}; every queued and running task failed, "
            "the workers were killed, and this TaskManager accepts no more tasks"
        )
        failure.__cause__ = error
        self._end_queued(lambda rec: rec.finish_failed(failure))
        flights = list(self._flights.values())
        self._flights.clear()
        self._kill_reasons.clear()
        self._timeouts.clear()
        self._graces.clear()
        for rec in flights:
            if not rec.status.is_terminal:
                rec.finish_failed(failure)
                self._on_change(rec)
        self._drained.set()
        if not self._ready.is_set():
            self._startup_error = failure
            self._ready.set()
        self._stop.set()
