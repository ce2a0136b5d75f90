"""The supervisor: the one trio task that owns every worker and every transition.

It keeps the dispatch queue (a heap: higher priority first, FIFO among
equals), hands a job only to an idle worker, turns worker messages into task
transitions, and runs the single kill path: *signal → reap → record → refill*,
shared by cancel, timeout, crash and shutdown.

Everything that changes a task's state happens here, in plain synchronous
methods that never await halfway through a transition. The facade
(:mod:`._manager`) calls those methods from its own tasks; that is safe
because trio runs one task at a time.

All of it runs with KeyboardInterrupt protection (trio's
``enable_ki_protection``): a Ctrl-C never lands halfway through a
transition, and trio delivers it to the application's main task instead,
which then shuts the manager down like any other exception would.
"""

from __future__ import annotations

import heapq
import logging
import math
import multiprocessing
import os
import pickle
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any

import trio
from trio.lowlevel import enable_ki_protection

from genro_tasks_worker._protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    KIND_NAMES,
    PICKLE_PROTOCOL,
    READY,
    STARTED,
    DoneBadResult,
    DoneError,
    DoneOk,
    DoneTooLarge,
    FrameTooLarge,
    InitFailed,
    Message,
    Progress,
    ProtocolError,
    Ready,
    Started,
)

from ._errors import (
    ManagerClosed,
    MemoryLimitExceeded,
    MessageTooLarge,
    SupervisorFailed,
    TaskTimeout,
    UnpicklableResult,
    WorkerCrashed,
    WorkerInitError,
    describe_exit,
)
from ._task import TaskManagerStatistics, TaskRecord, TaskStatus
from ._worker_proc import KillReason, WorkerProcess, WorkerState, main_module_ref

log = logging.getLogger("genro_tasks")

#: How often a task whose worker died before starting it is sent again.
MAX_REQUEUES = 3
#: Respawn back-off after workers die before becoming ready.
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0
#: How long a graceful stop waits for workers to exit before killing them.
_STOP_GRACE = 5.0
#: How long a worker may live on after closing its result pipe.
_EOF_GRACE = 1.0
#: Safety net around reaping a SIGKILLed process.
_REAP_LIMIT = 10.0
#: Workers dying before READY this many times in a row mean none can start (queued tasks fail).
_FAILED_STARTS = 3
#: Worker states that can still run a task (now, or once started).
_LIVE_STATES = frozenset({WorkerState.STARTING, WorkerState.IDLE, WorkerState.BUSY})
#: How long a crashed worker's exit status may take to arrive (it names the signal).
_STATUS_LIMIT = 2.0


class Supervisor:
    """Owns the worker processes and the queue of one TaskManager."""

    def __init__(
        self,
        max_workers: int,
        ctx: BaseContext,
        on_change: Callable[[TaskRecord | None], None],
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.max_workers = max_workers
        self.max_message_size = max_message_size
        self._ctx = ctx
        self._on_change = on_change
        self._init_payload = pickle.dumps((initializer, initargs), PICKLE_PROTOCOL) if initializer is not None else None
        self._main_ref = main_module_ref()
        self._max_tasks = max_tasks_per_worker
        #: The last initializer failure (a remote error), while workers keep failing to start.
        self.init_error: WorkerInitError | None = None
        self.completed = 0
        self.failed_count = 0
        self.cancelled = 0
        # The heap holds only (-priority, seq) int pairs, which the cyclic GC
        # stops tracking; the records live in _queued, keyed by seq.
        self._queue: list[tuple[int, int]] = []
        self._queued: dict[int, TaskRecord] = {}
        self.workers: set[WorkerProcess] = set()
        self._idle: list[WorkerProcess] = []
        self.busy = 0
        self._numbers = 0
        self._nursery: trio.Nursery | None = None
        self._alive_r, self._alive_w = os.pipe()
        self.accepting = True
        self._stopping = False
        self.failed: BaseException | None = None
        self._starting = True
        self._ready = trio.Event()
        self._startup_error: BaseException | None = None
        self._drained = trio.Event()
        self._no_workers = trio.Event()
        self._stop = trio.Event()
        self.finished = trio.Event()
        self._backoff = 0.0
        #: Workers in a row that died before they were ready (reset by a READY).
        self._failed_starts = 0
        self._ready_count = 0
        self.restarts = 0
        self.crashes = 0

    # ------------------------------------------------------------------ running
    @enable_ki_protection
    async def run(self) -> None:
        """Body of the supervisor task (a trio system task)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for _ in range(self.max_workers):
                    self._spawn()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            self._stopping = True
            if _only_cancelled(exc):
                raise
            # A system task must never crash the application: fail loudly, but here.
            self._fail(exc)
        finally:
            try:
                with trio.CancelScope(shield=True):
                    await self._kill_everything(KillReason.SHUTDOWN)
            finally:
                self._nursery = None
                self._release_startup("the TaskManager was shut down while it was starting")
                self.finished.set()
                os.close(self._alive_w)
                os.close(self._alive_r)

    def _release_startup(self, why: str) -> None:
        """Never leave startup() waiting: fail it if the workers will not all be ready."""
        if not self._ready.is_set():
            if self._startup_error is None:
                self._startup_error = ManagerClosed(why)
            self._ready.set()

    async def wait_ready(self) -> None:
        """Wait until the initial workers all reported READY (or raise why not)."""
        await self._ready.wait()
        self._starting = False
        if self._startup_error is not None:
            raise self._startup_error

    def _fail(self, exc: BaseException) -> None:
        """The supervisor broke: fail everything in flight, kill the workers, refuse new work."""
        if self.failed is not None:
            return
        log.critical("genro_tasks supervisor failed; failing all tasks", exc_info=exc)
        self.failed = exc
        self.accepting = False
        self._stopping = True
        root = _root_cause(exc)
        error = SupervisorFailed(
            f"the task supervisor failed: {type(root).__name__}: {root}; every queued and running task failed, "
            "the workers were killed, and this TaskManager accepts no more tasks"
        )
        error.__cause__ = exc
        self._end_queued(lambda rec: rec.finish_failed(error))
        for w in list(self.workers):
            running = w.task
            if running is not None and not running.status.is_terminal:
                running.finish_failed(error)
                self._count(running)
                self._on_change(running)
            w.task = None
            self._kill(w, KillReason.SUPERVISOR)
        self.busy = 0
        self._drained.set()
        if not self._ready.is_set():
            self._startup_error = error
            self._ready.set()

    # ----------------------------------------------------------------- workers
    def _spawn(self) -> None:
        assert self._nursery is not None
        self._numbers += 1
        try:
            w = WorkerProcess(
                self._ctx, self._alive_r, self._numbers, self._init_payload, self._main_ref, self.max_message_size
            )
        except Exception as exc:
            log.error("could not start a genro_tasks worker process: %s", exc)
            if self._starting:
                self._startup_error = RuntimeError(f"TaskManager could not start a worker process: {exc}")
                self._startup_error.__cause__ = exc
                self._ready.set()
                return
            self._schedule_respawn()
            return
        self.workers.add(w)
        self._no_workers = trio.Event()
        log.info("worker %d started (pid %d)", w.number, w.pid)
        self._nursery.start_soon(self._serve, w, name=f"genro_tasks worker {w.pid}")

    def _schedule_respawn(self) -> None:
        assert self._nursery is not None
        self._backoff = _BACKOFF_FIRST if self._backoff == 0 else min(self._backoff * 2, _BACKOFF_MAX)
        self._nursery.start_soon(self._respawn_later, self._backoff)

    @enable_ki_protection
    async def _respawn_later(self, delay: float) -> None:
        await trio.sleep(delay)
        if not self._stopping:
            self._spawn()

    @enable_ki_protection
    async def _serve(self, w: WorkerProcess) -> None:
        """Run one worker's pipes until its process exits, then account for it."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_loop, w)
                nursery.start_soon(w.write_loop)
                await self._watch_exit(w)
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            if _only_cancelled(exc):
                # Only the supervisor's own nursery cancels us: it is going down.
                self._stopping = True
                self.accepting = False
                raise
            # An unexpected error in our own code: the supervisor cannot be trusted.
            self._fail(exc)
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._settle_exit(w)

    async def _settle_exit(self, w: WorkerProcess) -> None:
        """Make sure the worker's process is dead, record what that means, then release it.

        Death is observed on the worker's own pidfd. A worker nobody asked to
        die gets a moment for its exit status to arrive (the forkserver reports
        it), so the crash can say how it died; a killed worker is recorded at
        once: it is dead, which is all a cancel or a timeout needs to know.
        """
        if w.state is not WorkerState.DEAD:
            if not w.has_exited():
                self._kill(w, w.kill_reason or KillReason.SHUTDOWN)
                with trio.move_on_after(_REAP_LIMIT):
                    await w.wait_exit()
            if w.kill_reason is None:
                await w.wait_reaped(_STATUS_LIMIT)
            self._exit_safely(w)
        if w.pidfd is not None or w.reader.fd >= 0:  # not released yet
            await w.wait_reaped(_REAP_LIMIT)
            w.release()

    async def _watch_exit(self, w: WorkerProcess) -> None:
        """Wait for the process to exit; meanwhile enforce timeouts and grace periods."""
        while True:
            with trio.CancelScope(deadline=self._deadline(w)) as w.timer:
                await w.wait_exit()
                return
            now = trio.current_time()
            if w.state is WorkerState.STOPPING and w.stop_deadline <= now:
                log.warning("worker %d did not exit within %gs of being told to stop; killing it", w.pid, _STOP_GRACE)
                self._kill(w, KillReason.STOP)
                continue
            if w.state is not WorkerState.BUSY:
                continue
            rec = w.task
            if w.grace_deadline <= now:
                log.info("worker %d: grace period over; killing it", w.pid)
                self._kill(w, KillReason.CANCEL)
            elif rec is not None and rec.status is TaskStatus.RUNNING and rec.deadline <= now:
                log.info("task %r exceeded its timeout of %gs; killing worker %d", rec.task_id, rec.timeout, w.pid)
                self._kill(w, KillReason.TIMEOUT)

    @staticmethod
    def _deadline(w: WorkerProcess) -> float:
        if w.state is WorkerState.STOPPING:
            return w.stop_deadline  # told to exit: killed if it has not by then
        if w.state is not WorkerState.BUSY:
            return math.inf  # dying or idle: nothing left to enforce
        rec = w.task
        task_deadline = rec.deadline if rec is not None and rec.status is TaskStatus.RUNNING else math.inf
        return min(task_deadline, w.grace_deadline)

    def _rearm(self, w: WorkerProcess) -> None:
        if w.timer is not None:
            w.timer.deadline = self._deadline(w)

    @enable_ki_protection
    async def _read_loop(self, w: WorkerProcess) -> None:
        frames: list[Message] = []
        reader = w.reader
        while True:
            try:
                alive = reader.read(frames)
                broken: ProtocolError | None = None
            except BlockingIOError:
                await trio.lowlevel.wait_readable(reader.fd)
                continue
            except ProtocolError as exc:
                alive, broken = True, exc
            except MemoryError:
                # Bodies grow only as their bytes arrive: this is a message within
                # max_message_size that this process has no memory left for.
                alive, broken = True, ProtocolError("its message is larger than the memory left to receive it")
            if frames:  # the messages before a broken frame count, in order
                try:
                    for frame in frames:
                        self._on_frame(w, frame)
                except ProtocolError as exc:
                    self._protocol_error(w, exc)
                    return
                finally:
                    frames.clear()
            if isinstance(broken, FrameTooLarge):
                self._too_large(w, broken)
                return
            if broken is not None:
                self._protocol_error(w, broken)
                return
            if not alive:
                # Normally the process has exited and _serve cancels us any
                # moment now; one that lives on without its pipe is broken.
                await trio.sleep(_EOF_GRACE)
                self._kill(w, KillReason.CRASH, "it closed its result pipe but kept running")
                return
            await trio.lowlevel.checkpoint_if_cancelled()

    def _protocol_error(self, w: WorkerProcess, exc: ProtocolError) -> None:
        log.warning("worker %d sent a corrupt message (%s); treating it as crashed", w.pid, exc)
        self._kill(w, KillReason.CRASH, f"it sent a corrupt message: {exc}")

    def _too_large(self, w: WorkerProcess, exc: FrameTooLarge) -> None:
        """A frame over max_message_size: its task fails, its worker (whose pipe is now useless) is replaced."""
        rec = w.task
        if exc.kind in (READY, STARTED) or rec is None or rec.seq != exc.seq or rec.status is not TaskStatus.RUNNING:
            self._protocol_error(w, exc)
            return
        log.warning("worker %d: task %r sent %s; killing the worker", w.pid, rec.task_id, exc)
        w.oversize = (KIND_NAMES[exc.kind], exc.length)
        self._kill(w, KillReason.TOO_LARGE, str(exc))

    def _drain(self, w: WorkerProcess) -> None:
        """Handle the whole frames an exited worker left in its pipe."""
        frames: list[Message] = []
        for _ in range(1 << 16):
            try:
                if not w.reader.read(frames):
                    break
            except Exception:  # BlockingIOError at the end; anything else: stop reading
                break
        for frame in frames:
            try:
                self._on_frame(w, frame)
            except ProtocolError:
                break

    # ---------------------------------------------------------------- messages
    def _on_frame(self, w: WorkerProcess, msg: Message) -> None:
        if w.state is WorkerState.DYING or w.state is WorkerState.DEAD:
            return  # we already decided how its task ends
        if isinstance(msg, InitFailed):
            if w.state is not WorkerState.STARTING:
                raise ProtocolError("unexpected InitFailed")
            self._init_failed(w, msg)
            return
        if isinstance(msg, Ready):
            if w.state is not WorkerState.STARTING or msg.pid != w.pid:
                raise ProtocolError(f"unexpected Ready (pid {msg.pid})")
            w.state = WorkerState.IDLE
            w.ready = True
            self._backoff = 0.0
            self._failed_starts = 0
            self.init_error = None
            log.debug("worker %d ready", w.pid)
            if self._stopping:
                self._tell_to_stop(w)
                return
            self._idle.append(w)
            self._on_change(None)
            self._ready_count += 1
            if not self._ready.is_set() and self._ready_count >= self.max_workers:
                self._ready.set()
            self.dispatch()
            return
        rec = w.task
        if rec is None or rec.seq != msg.seq:
            raise ProtocolError(f"{type(msg).__name__} about task #{msg.seq}, which this worker does not run")
        if type(msg) is Started:
            if rec.status is not TaskStatus.PENDING:
                raise ProtocolError("Started twice")
            rec.set_running(w.pid)
            if rec.timeout is not None:
                rec.deadline = trio.current_time() + rec.timeout
                self._rearm(w)
            log.debug("task %r running in worker %d", rec.task_id, w.pid)
            self._on_change(rec)
            return
        if rec.status is not TaskStatus.RUNNING:
            raise ProtocolError(f"{type(msg).__name__} before Started")
        if type(msg) is Progress:
            rec.set_progress(msg.fraction, msg.message)
            self._on_change(rec)
            return
        if type(msg) is DoneOk:
            # Decoded here, before COMPLETED is recorded: COMPLETED means result() returns.
            try:
                value = pickle.loads(msg.result)
            except BaseException as exc:  # user code ran: even SystemExit stays here, as this task's failure
                error = UnpicklableResult(
                    f"Task {rec.task_id!r} ({rec.name}) returned a value that cannot be unpickled in this "
                    f"process: {_describe(exc)}; return plain data, or make the value's class importable here"
                )
                error.__cause__ = exc if isinstance(exc, Exception) else None
                rec.finish_failed(error)
            else:
                rec.finish_ok(value)
        elif type(msg) is DoneError:
            failure = msg.failure
            if w.grace_deadline < math.inf:
                rec.finish_cancelled(f"cancelled gracefully; the job ended with {failure.type_name}: {failure.message}")
            elif failure.type_name == "MemoryError" and rec.memory_limit is not None:
                limit_error = MemoryLimitExceeded(rec.task_id, rec.memory_limit, failure.traceback)
                rec.finish_failed(limit_error)
            else:
                rec.finish_remote_error(failure)
        elif type(msg) is DoneBadResult:
            rec.finish_failed(
                UnpicklableResult(
                    f"Task {rec.task_id!r} ({rec.name}) returned a {msg.type_name} that cannot be pickled "
                    f"({msg.reason}); return plain data instead, e.g. write it to a file and return the path"
                )
            )
        elif type(msg) is DoneTooLarge:
            rec.finish_failed(MessageTooLarge(rec.task_id, msg.what, msg.size, self.max_message_size))
        else:  # pragma: no cover - the framer accepts worker messages only
            raise ProtocolError(f"unexpected {type(msg).__name__}")
        log.debug("task %r %s", rec.task_id, rec.status.value)
        w.task = None
        w.jobs_done += 1
        if w.grace_deadline != math.inf or rec.timeout is not None:
            w.grace_deadline = math.inf
            self._rearm(w)
        self.busy -= 1
        self._count(rec)
        self._on_change(rec)
        if w.state is WorkerState.BUSY and not w.exited:
            if self._max_tasks is not None and w.jobs_done >= self._max_tasks and not self._stopping:
                self._retire(w)
            else:
                w.state = WorkerState.IDLE
                self._idle.append(w)
            self.dispatch()
        self._check_drained()

    def _init_failed(self, w: WorkerProcess, msg: InitFailed) -> None:
        """A worker's initializer raised: remember why (the worker exits next; _on_exit goes on)."""
        type_name, message, tb_text = msg.failure.type_name, msg.failure.message, msg.failure.traceback
        w.init_failed = True
        log.warning("worker %d: initializer failed: %s: %s", w.pid, type_name, message)
        self._start_failed(WorkerInitError(type_name, message, tb_text))

    def _start_failed(self, error: WorkerInitError) -> None:
        """A worker could not start: fail startup(), and queued tasks if no other worker can run them."""
        self.init_error = error
        if self._starting and not self._ready.is_set():
            self._startup_error = error
            self._ready.set()

    def _can_run_soon(self) -> bool:
        """True if some worker is ready, busy or still starting (and so may run queued tasks)."""
        return any(w.state in _LIVE_STATES for w in self.workers)

    def _retire(self, w: WorkerProcess) -> None:
        """Recycle a worker that did its max_tasks_per_worker: it exits, a new one starts now."""
        log.info("worker %d retiring after %d tasks", w.pid, w.jobs_done)
        w.retired = True
        self._tell_to_stop(w)
        self.restarts += 1
        self._spawn()

    def _tell_to_stop(self, w: WorkerProcess) -> None:
        """Close an idle worker's job pipe: it exits, or is killed ``_STOP_GRACE`` seconds later."""
        w.state = WorkerState.STOPPING
        w.stop_deadline = trio.current_time() + _STOP_GRACE
        w.close_jobs()
        self._rearm(w)

    def _count(self, rec: TaskRecord) -> None:
        status = rec.status
        if status is TaskStatus.COMPLETED:
            self.completed += 1
        elif status is TaskStatus.FAILED:
            self.failed_count += 1
        elif status is TaskStatus.CANCELLED:
            self.cancelled += 1

    # ---------------------------------------------------------------- the queue
    @enable_ki_protection
    def enqueue(self, rec: TaskRecord) -> None:
        heapq.heappush(self._queue, (-rec.priority, rec.seq))
        self._queued[rec.seq] = rec
        self._drained = trio.Event() if self._drained.is_set() else self._drained
        self.dispatch()

    @enable_ki_protection
    def dispatch(self) -> None:
        """Hand queued jobs to idle workers until one of them runs out."""
        queue = self._queue
        queued = self._queued
        idle = self._idle
        while idle and queue:
            rec = queued.pop(heapq.heappop(queue)[1], None)
            if rec is None:
                continue  # cancelled while queued
            w = idle.pop()
            w.state = WorkerState.BUSY
            w.task = rec
            rec.worker = w
            self.busy += 1
            assert rec.payload is not None
            w.send_job(rec.seq, rec.payload)

    @enable_ki_protection
    def cancel(self, rec: TaskRecord, grace: float | None = None) -> None:
        """Start cancelling ``rec``; the caller then waits for it to be terminal.

        A queued task is CANCELLED at once. A task on a worker (even one
        that has not started it yet) gets its worker killed; the task is
        recorded CANCELLED when the process has been reaped. With ``grace``,
        a RUNNING job first gets SIGTERM (CancelRequested inside the job)
        and is killed only if it has not ended ``grace`` seconds later.
        """
        if rec.status.is_terminal:
            return
        w = rec.worker
        if w is None:
            del self._queued[rec.seq]  # its heap entry is skipped when it surfaces
            if len(self._queue) > 2 * len(self._queued) + 64:  # too many stale entries: compact
                self._queue = [(-r.priority, r.seq) for r in self._queued.values()]
                heapq.heapify(self._queue)
            rec.finish_cancelled("cancelled while queued")
            log.debug("task %r cancelled while queued", rec.task_id)
            self._count(rec)
            self._on_change(rec)
            self._check_drained()
            return
        if w.state is WorkerState.DYING:
            rec.cancel_requested = True  # if it is requeued (never started), it ends CANCELLED
            return
        if grace is not None and rec.status is TaskStatus.RUNNING:
            if w.grace_deadline == math.inf:
                log.debug("cancelling task %r gracefully (%gs)", rec.task_id, grace)
                w.grace_deadline = trio.current_time() + grace
                w.terminate(rec.seq)
                self._rearm(w)
            return
        log.debug("cancelling task %r: killing worker %d", rec.task_id, w.pid)
        self._kill(w, KillReason.CANCEL)

    @enable_ki_protection
    def cancel_queued(self) -> None:
        self._end_queued(lambda rec: rec.finish_cancelled("cancelled by shutdown"))

    def _end_queued(self, finish: Callable[[TaskRecord], None]) -> None:
        """Give every queued task its terminal state with ``finish``, and empty the queue."""
        for rec in self._queued.values():
            finish(rec)
            self._count(rec)
            self._on_change(rec)
        self._queue.clear()
        self._queued.clear()
        self._check_drained()

    @enable_ki_protection
    def kill_busy(self) -> None:
        for w in list(self.workers):
            if w.task is not None:
                self._kill(w, KillReason.SHUTDOWN)

    def _check_drained(self) -> None:
        if not self._queued and self.busy == 0:
            self._drained.set()

    # ---------------------------------------------------------------- kill path
    def _kill(self, w: WorkerProcess, reason: KillReason, detail: str = "") -> None:
        """Step 1 of the kill path: signal. Reaping and recording follow in _on_exit."""
        if w.state in (WorkerState.DYING, WorkerState.DEAD):
            return
        if w in self._idle:
            self._idle.remove(w)
        w.state = WorkerState.DYING
        w.kill_reason = reason
        w.kill_detail = detail
        w.kill()

    def _exit_safely(self, w: WorkerProcess) -> None:
        """_on_exit, but a failure in it can never stop the cleanup of the others."""
        try:
            self._on_exit(w)
        except Exception as exc:
            self._fail(exc)
            self.workers.discard(w)
            if w in self._idle:
                self._idle.remove(w)
            w.state = WorkerState.DEAD
            if not self.workers:
                self._no_workers.set()

    def _on_exit(self, w: WorkerProcess) -> None:
        """Steps 2-4 of the kill path, and the whole story of a crash: reap, record, refill."""
        w.exited = True  # frames still in its pipe count, but it gets no new job
        self._drain(w)
        exitcode = w.reap()
        reason = w.kill_reason
        was_ready = w.ready
        stopping = w.state is WorkerState.STOPPING
        if w in self._idle:
            self._idle.remove(w)
        w.state = WorkerState.DEAD
        self.workers.discard(w)
        rec = w.task
        w.task = None
        if rec is not None:
            self.busy -= 1
            self._account_task(w, rec, reason, exitcode)
        elif reason is None and not stopping:
            if was_ready:
                self.crashes += 1
                log.warning("idle worker %d died (%s); replacing it", w.pid, describe_exit(exitcode))
            elif not w.init_failed:
                # Died while starting (in the initializer or before it). Once could be a kill from
                # outside; several starts in a row failing is a failed start, like an initializer raising.
                self.crashes += 1
                self._failed_starts += 1
                log.warning("worker %d died before it was ready (%s)", w.pid, describe_exit(exitcode))
                if self._failed_starts >= _FAILED_STARTS or (self._starting and not self._ready.is_set()):
                    self._start_failed(
                        WorkerInitError(
                            "",
                            f"worker {w.pid} {describe_exit(exitcode)} before it was ready (its stderr says why; "
                            "if your main module starts a TaskManager when imported, guard that code with "
                            "`if __name__ == '__main__':`)",
                            "",
                        )
                    )
            error = self.init_error
            if not was_ready and error is not None and not self._can_run_soon():
                # No worker can run anything now: tell the queued tasks, not never.
                self._end_queued(lambda queued: queued.finish_failed(error.for_task(queued.task_id)))
        else:
            log.info("worker %d exited (%s)", w.pid, describe_exit(exitcode))
        if not self.workers:
            self._no_workers.set()
        self._check_drained()
        if not self._stopping and self.failed is None and not w.retired:
            self.restarts += 1
            if was_ready:
                self._spawn()
            else:
                self._schedule_respawn()
        self.dispatch()
        self._on_change(None)

    def _account_task(self, w: WorkerProcess, rec: TaskRecord, reason: KillReason | None, exitcode: int | None) -> None:
        if rec.status.is_terminal:  # pragma: no cover - finished by _fail
            return
        if reason is KillReason.CANCEL:
            rec.finish_cancelled(f"cancelled by the caller; worker {w.pid} was killed")
        elif reason is KillReason.SHUTDOWN:
            rec.finish_cancelled("cancelled by shutdown")
        elif reason is KillReason.TIMEOUT:
            assert rec.timeout is not None
            rec.finish_failed(TaskTimeout(rec.task_id, rec.timeout))
        elif reason is KillReason.TOO_LARGE:
            what, size = w.oversize
            rec.finish_failed(MessageTooLarge(rec.task_id, what, size, self.max_message_size))
        elif reason is KillReason.SUPERVISOR:  # pragma: no cover - _fail finished it
            return
        elif rec.status is TaskStatus.PENDING and rec.cancel_requested:
            rec.finish_cancelled(f"cancelled by the caller; worker {w.pid} died before starting it")
        elif rec.status is TaskStatus.PENDING and rec.requeues < MAX_REQUEUES and not self._stopping:
            # The worker died before it even unpacked the job: send it elsewhere.
            self.crashes += 1
            log.warning(
                "worker %d died (%s) before starting task %r; requeueing it",
                w.pid,
                describe_exit(exitcode),
                rec.task_id,
            )
            rec.requeues += 1
            rec.worker = None
            heapq.heappush(self._queue, (-rec.priority, rec.seq))
            self._queued[rec.seq] = rec
            return
        else:
            self.crashes += 1
            crash = WorkerCrashed(rec.task_id, w.pid, exitcode, w.kill_detail)
            log.warning("%s", crash)
            rec.finish_failed(crash)
        self._count(rec)
        self._on_change(rec)

    @property
    def queued(self) -> int:
        """Tasks waiting in the queue (derived: the records not yet handed to a worker)."""
        return len(self._queued)

    @enable_ki_protection
    def statistics(self, tracked: int) -> TaskManagerStatistics:
        running = sum(1 for w in self.workers if w.task is not None and w.task.status is TaskStatus.RUNNING)
        return TaskManagerStatistics(
            workers_total=len(self.workers),
            workers_idle=len(self._idle),
            workers_busy=self.busy,
            tasks_queued=self.queued,
            tasks_running=running,
            tasks_completed=self.completed,
            tasks_failed=self.failed_count,
            tasks_cancelled=self.cancelled,
            tasks_tracked=tracked,
            worker_restarts=self.restarts,
            worker_crashes=self.crashes,
        )

    # ------------------------------------------------------------------ stopping
    async def stop(self, wait: bool, cancel_pending: bool) -> None:
        """Stop accepting, settle every task as asked, stop the workers, end the supervisor.

        Idempotent. If the awaiting task is cancelled, escalates to killing
        everything (shielded) before letting the cancellation through.
        """
        self.accepting = False
        self._release_startup("the TaskManager was shut down while it was starting")
        try:
            if cancel_pending or not wait:
                self.cancel_queued()
            if not wait:
                self.kill_busy()
            self._check_drained()
            await self._drained.wait()
            self._stopping = True
            for w in list(self.workers):
                if w.state in (WorkerState.IDLE, WorkerState.STARTING):
                    if w in self._idle:
                        self._idle.remove(w)
                    if w.state is WorkerState.IDLE:
                        self._tell_to_stop(w)
            with trio.move_on_after(_STOP_GRACE):
                if self.workers:
                    await self._no_workers.wait()
        finally:
            self._stopping = True
            self._stop.set()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(_REAP_LIMIT + _STOP_GRACE) as stuck:
                    await self.finished.wait()
                if stuck.cancelled_caught:  # pragma: no cover - a bug; never hang the caller
                    log.critical("genro_tasks supervisor did not stop in time; giving up on it")

    @enable_ki_protection
    async def _kill_everything(self, reason: KillReason) -> None:
        self._stopping = True
        self.accepting = False
        self.cancel_queued()
        for w in list(self.workers):
            self._kill(w, reason)
        for w in list(self.workers):
            await self._settle_exit(w)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception raised by user code, even if its ``__str__`` raises."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except BaseException:
        return f"{type(exc).__name__} (its message could not be formatted)"


def _root_cause(exc: BaseException) -> BaseException:
    """The interesting exception inside trio's nursery groups."""
    while isinstance(exc, BaseExceptionGroup):
        rest = exc.split(trio.Cancelled)[1]
        if rest is None or len(rest.exceptions) != 1:
            return exc
        exc = rest.exceptions[0]
    return exc


def _only_cancelled(exc: BaseException) -> bool:
    """True if ``exc`` is trio.Cancelled, or a group of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


def default_context(start_method: str) -> BaseContext:
    """Return the multiprocessing context for ``start_method`` (forkserver or spawn)."""
    if start_method not in ("forkserver", "spawn"):
        raise ValueError(
            f"start_method must be 'forkserver' or 'spawn', not {start_method!r}: 'fork' would copy the "
            "parent's trio state into every worker"
        )
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload(["__main__", "genro_tasks_worker._loop"])
    return ctx
