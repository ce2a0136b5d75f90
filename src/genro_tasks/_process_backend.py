"""The process backend: jobs run in a pool of local worker processes.

It owns the worker processes (:class:`~._worker_proc.WorkerProcess`): it
starts them (forkserver or spawn), with back-off while they fail to start,
retires them after ``max_tasks_per_worker`` jobs, decodes everything they
send (:meth:`ProcessBackend._on_message`, the one place that reads worker
messages), and runs the single kill path: *signal → observe death on the
pidfd → report → refill* (:meth:`ProcessBackend._kill`, then
:meth:`ProcessBackend._on_exit`). Which worker runs which job is kept in one
place, ``ProcessBackend._jobs``.

**Pipelining.** A busy worker holds a few jobs behind the current one
(:data:`HELD_AHEAD`, :data:`HELD_BUDGET`), and starts each the moment the one
before ends, without waiting for the parent (``free_slots`` counts these slots
too, after the idle workers). The jobs dispatched while one read of a worker's
messages is handled leave in one write per worker, at the end of that read.
A job stays PENDING until the worker says STARTED. A job sent ahead has a
*ticket* (one sent to an idle worker has none: cancelling it kills the
worker, as for a running job); one that has not started is cancelled by
taking back its ticket
(:meth:`~._worker_proc.WorkerProcess.take_back`): if the ticket came back,
the job will never start (another job's ticket taken back with it is granted
again: its ticket and its frame are sent anew); if the worker had taken it,
every job before it on that worker has ended (their Done are in the pipe),
and the worker is killed the moment it reports that job STARTED. When a
worker dies, the jobs whose tickets were taken back (or that never reported
STARTED: its pipe is read to the end first, however it died) are reported lost
before they started, and the scheduler queues them again. A worker that owes the parent
bytes (the STARTED of the job it is to start next, or what a cancel waits for)
and moves none for :data:`_OWED_LIMIT` is stuck between jobs: it is killed.

It never decides what a death means for a task: it reports
:meth:`~._backend.BackendListener.lost` and the scheduler decides.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import time
from multiprocessing.context import BaseContext

import trio
from trio.lowlevel import enable_ki_protection

from genro_tasks_worker._protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DONE_BAD_RESULT,
    DONE_ERROR,
    DONE_OK,
    DONE_TOO_LARGE,
    KIND_NAMES,
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

from ._backend import (
    BackendListener,
    BackendStatistics,
    ExecutionBackend,
    Lost,
    Outcome,
    Raised,
    Returned,
    TooLarge,
    Undecodable,
    Unreturnable,
)
from ._errors import WorkerInitError, describe_exit
from ._launch import main_module_ref
from ._util import only_cancelled
from ._worker_proc import KillReason, WorkerProcess, WorkerState

log = logging.getLogger("genro_tasks")

#: Respawn back-off after workers die before becoming ready.
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0
#: How long a worker told to stop may take to exit before it is killed.
_STOP_GRACE = 5.0
#: How long a worker may live on after closing its result pipe.
_EOF_GRACE = 1.0
#: Safety net around waiting for a SIGKILLed process.
_REAP_LIMIT = 10.0
#: How long a crashed worker's exit status may take to arrive (it names the signal).
_STATUS_LIMIT = 2.0
#: A worker with a job to start and nothing running before it owes that job's STARTED (after the
#: Done of the job before, it cleans up, then takes the next ticket and says STARTED at once): if no
#: byte moved for this long (at most twice this since the job was handed over), it is stuck between
#: jobs on something the job before left; it is replaced and the job, never started, runs on another
#: worker. A kill that finds the job's result arriving, or the next job's ticket taken, waits for the
#: Done and STARTED the worker owes, and kills it only after this long without a byte.
_OWED_LIMIT = 2.0
#: Workers dying before READY this many times in a row mean none can start (queued tasks fail).
_FAILED_STARTS = 3
#: Worker states that can still run a job (now, or once started).
#: At most this many jobs a busy worker holds behind the one it runs (pipelining): it starts
#: each the moment the one before ends, and the parent sends them in few writes and reads their
#: replies in few.
HELD_AHEAD = 15
#: Seconds of held work a worker takes on, estimated from its last job (STARTED to Done, as the
#: parent saw it): a job of 1 ms or less lets it hold HELD_AHEAD, one of 5 ms four, one longer
#: than HELD_BUDGET / 2 one. So a task submitted later, however urgent, waits behind
#: about HELD_BUDGET of held work on a worker at most (or behind one job, if that one is slow).
HELD_BUDGET = 0.02
_LIVE_STATES = frozenset({WorkerState.STARTING, WorkerState.IDLE, WorkerState.BUSY})
#: The kinds of a job's last message (its result): once one is arriving, the job has ended.
_RESULT_KINDS = frozenset({DONE_OK, DONE_ERROR, DONE_BAD_RESULT, DONE_TOO_LARGE})


class ProcessBackend(ExecutionBackend):
    """A pool of ``max_workers`` local worker processes.

    Args:
        max_workers: How many workers to keep.
        ctx: The multiprocessing context (see :func:`default_context`).
        init_payload: The pickled ``(initializer, initargs)``, or None.
        max_tasks_per_worker: Replace a worker after this many jobs (None: never).
        max_message_size: Largest message a worker may send (and is sent).
    """

    def __init__(
        self,
        max_workers: int,
        ctx: BaseContext,
        init_payload: bytes | None = None,
        max_tasks_per_worker: int | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.capacity = max_workers
        self.max_message_size = max_message_size
        self._ctx = ctx
        self._init_payload = init_payload
        self._main_ref = main_module_ref()
        self._max_tasks = max_tasks_per_worker
        self._listener: BackendListener | None = None
        self._nursery: trio.Nursery | None = None
        self.workers: set[WorkerProcess] = set()
        self._idle: list[WorkerProcess] = []
        #: Workers holding one job that may be sent their next one now (pipelining).
        self._open: list[WorkerProcess] = []
        #: While a batch of worker messages is handled: jobs dispatched meanwhile wait for its end
        #: (:meth:`_flush`), so each worker gets them in one write.
        self._deferring = False
        self._deferred: list[WorkerProcess] = []
        #: The one task-to-handle mapping: job key -> the worker running it.
        self._jobs: dict[int, WorkerProcess] = {}
        self._numbers = 0
        #: Workers being started in a thread right now (not in ``workers`` yet).
        self._launching = 0
        self._launch_lock = trio.Lock()
        self._alive_r = self._alive_w = -1
        self._stopping = False
        self._all_ready = False
        self._ready_count = 0
        self._backoff = 0.0
        #: Workers in a row that died before they were ready (reset by a READY).
        self._failed_starts = 0
        self._no_workers = trio.Event()
        #: The last failure to start a worker, until one starts fine again.
        self.start_error: BaseException | None = None
        self.restarts = 0
        self.crashes = 0

    # ------------------------------------------------------------------ serving
    @enable_ki_protection
    async def serve(self, listener: BackendListener) -> None:
        """Start ``capacity`` workers and run the pool until cancelled (see ExecutionBackend.serve).

        **Cancellation:** How the pool is stopped: every worker is killed and
        reaped (shielded), and each job in flight is reported lost.
        """
        self._listener = listener
        self._alive_r, self._alive_w = os.pipe()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for _ in range(self.capacity):
                    self._spawn()
                await trio.sleep_forever()
        except BaseException as exc:
            if not only_cancelled(exc):
                listener.failed(exc)
            raise
        finally:
            self._stopping = True
            self._nursery = None
            with trio.CancelScope(shield=True):
                for w in list(self.workers):
                    self._kill(w, KillReason.SHUTDOWN)
                for w in list(self.workers):
                    await self._settle_exit(w)
            os.close(self._alive_w)
            os.close(self._alive_r)

    def _spawn(self) -> None:
        """Start one more worker (in the background: starting a process blocks for milliseconds)."""
        assert self._nursery is not None
        self._numbers += 1
        self._launching += 1
        if self._no_workers.is_set():
            self._no_workers = trio.Event()
        self._nursery.start_soon(self._launch, self._numbers, name=f"genro_tasks start worker {self._numbers}")

    @enable_ki_protection
    async def _launch(self, number: int) -> None:
        """Start a worker process in a thread (one at a time), then serve it."""
        assert self._listener is not None
        # Shielded: a process that was started is always registered, so it is always killed and reaped.
        with trio.CancelScope(shield=True):
            try:
                async with self._launch_lock:
                    w = await trio.to_thread.run_sync(
                        WorkerProcess,
                        self._ctx,
                        self._alive_r,
                        number,
                        self._init_payload,
                        self._main_ref,
                        self.max_message_size,
                        self._owns,
                    )
            except Exception as exc:
                log.error("could not start a genro_tasks worker process: %s", exc)
                self._launching -= 1
                self._check_no_workers()
                if not self._all_ready:
                    error = RuntimeError(f"TaskManager could not start a worker process: {exc}")
                    error.__cause__ = exc
                    self._listener.start_failed(error, none_left=False)
                elif not self._stopping:
                    self._schedule_respawn()
                return
            self._launching -= 1
            self.workers.add(w)
        log.info("worker %d started (pid %d)", w.number, w.pid)
        await self._serve(w)

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
            if not only_cancelled(exc):
                # A bug in our own code: say so before this worker's job is settled as a mere crash.
                assert self._listener is not None
                self._listener.failed(exc)
            raise
        finally:
            with trio.CancelScope(shield=True):
                await self._settle_exit(w)

    async def _watch_exit(self, w: WorkerProcess) -> None:
        """Wait for the process to exit; kill it if told to stop and still alive past the grace."""
        while True:
            with trio.CancelScope(deadline=min(w.stop_deadline, w.owed_deadline)) as w.timer:
                await w.wait_exit()
                return
            now = trio.current_time()
            if w.state is WorkerState.STOPPING and now >= w.stop_deadline:
                log.warning("worker %d did not exit within %gs of being told to stop; killing it", w.pid, _STOP_GRACE)
                self._kill(w, KillReason.STOP)
            elif now >= w.owed_deadline:
                self._check_owed(w)
            if w.state is WorkerState.DYING:
                w.stop_deadline = w.owed_deadline = math.inf  # its death is all there is left to see

    async def _settle_exit(self, w: WorkerProcess) -> None:
        """Make sure the worker's process is dead, report what happened, then release it.

        Death is observed on the worker's own pidfd. A worker nobody asked to
        die gets a moment for its exit status to arrive (the forkserver reports
        it), so the crash can say how it died; a killed worker is reported at
        once: it is dead, which is all a cancel or a timeout needs to know.
        """
        if w.state is not WorkerState.DEAD:
            if not w.has_exited():
                self._kill(w, w.kill_reason or KillReason.SHUTDOWN)
                with trio.move_on_after(_REAP_LIMIT):
                    await w.wait_exit()
            w.kill_group()  # what its jobs left in its process group dies with it, however it died
            if w.kill_reason is None:
                await w.wait_reaped(_STATUS_LIMIT)
            self._exit_safely(w)
        if w.pidfd is not None or w.reader.fd >= 0:  # not released yet
            await w.wait_reaped(_REAP_LIMIT)
            w.release()

    @enable_ki_protection
    async def _read_loop(self, w: WorkerProcess) -> None:
        messages: list[Message] = []
        fd = w.reader.fd
        while True:
            got = w.receive(messages)
            if got is None:
                await trio.lowlevel.wait_readable(fd)
                continue
            alive, broken = got
            if messages:  # the messages before a broken frame count, in order
                self._deferring = True
                try:
                    for msg in messages:
                        self._on_message(w, msg)
                except ProtocolError as exc:
                    self._protocol_error(w, exc)
                    return
                finally:
                    messages.clear()
                    self._deferring = False
                    if self._deferred:
                        self._flush()
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
            if w.reader.drained:  # a short read emptied the pipe: wait, not a read that finds nothing
                await trio.lowlevel.wait_readable(fd)
            else:
                await trio.lowlevel.checkpoint_if_cancelled()

    def _flush(self) -> None:
        """End a batch: write the jobs dispatched while it was handled, one write per worker."""
        self._deferring = False
        if self._deferred:
            for w in self._deferred:
                w.flush()
            self._deferred.clear()

    def _send_job(self, w: WorkerProcess, key: int, payload: bytes, ticketed: bool) -> None:
        """Send ``w`` its job ``key``: at once, or at the end of the batch being handled."""
        if w.send_job(key, payload, ticketed, defer=self._deferring):
            self._deferred.append(w)

    def _protocol_error(self, w: WorkerProcess, exc: ProtocolError) -> None:
        log.warning("worker %d sent a corrupt message (%s); treating it as crashed", w.pid, exc)
        self._kill(w, KillReason.CRASH, f"it sent a corrupt message: {exc}")

    def _too_large(self, w: WorkerProcess, exc: FrameTooLarge) -> None:
        """A frame over max_message_size: its job fails, its worker (whose pipe is now useless) is replaced."""
        if exc.kind in (READY, STARTED) or not w.assigned or w.assigned[0] != exc.seq or not w.started:
            self._protocol_error(w, exc)
            return
        log.warning("worker %d: task #%d sent %s; killing the worker", w.pid, exc.seq, exc)
        del self._jobs[exc.seq]
        del w.assigned[0]
        w.started = False
        self._kill(w, KillReason.TOO_LARGE, str(exc))  # not a crash: the job's message was the fault
        assert self._listener is not None
        self._listener.done(exc.seq, TooLarge(KIND_NAMES[exc.kind], exc.length, self.max_message_size))

    def _drain(self, w: WorkerProcess) -> None:
        """Handle the whole messages an exited worker left in its pipe."""
        for msg in w.leftovers():
            try:
                self._on_message(w, msg)
            except ProtocolError:
                break

    def _owns(self, w: WorkerProcess, key: int) -> bool:
        """True if ``w`` runs job ``key`` (the framer asks before buffering a large body)."""
        return self._jobs.get(key) is w

    # ---------------------------------------------------------------- messages
    def _on_message(self, w: WorkerProcess, msg: Message) -> None:
        """Act on one message from a worker and report it (the only reader of worker messages)."""
        listener = self._listener
        assert listener is not None
        if w.state is WorkerState.DYING or w.state is WorkerState.DEAD:
            if type(msg) is Started:
                w.said_started.add(msg.seq)  # a job it started before the kill: never "lost before it started"
            return  # being killed: its job's end is decided already
        kind = type(msg)
        if type(msg) is InitFailed:
            if w.state is not WorkerState.STARTING:
                raise ProtocolError("unexpected InitFailed")
            failure = msg.failure
            log.warning("worker %d: initializer failed: %s: %s", w.pid, failure.type_name, failure.message)
            w.init_error = WorkerInitError(failure.type_name, failure.message, failure.traceback)
            return  # it exits next; _on_exit reports it
        if type(msg) is Ready:
            if w.state is not WorkerState.STARTING or msg.pid != w.pid:
                raise ProtocolError(f"unexpected Ready (pid {msg.pid})")
            self._on_ready(w)
            return
        key: int = msg.seq  # type: ignore[union-attr]
        if self._jobs.get(key) is not w:
            raise ProtocolError(f"{kind.__name__} about task #{key}, which this worker does not run")
        if key != w.assigned[0]:
            raise ProtocolError(f"{kind.__name__} about task #{key} before task #{w.assigned[0]} ended")
        if kind is Started:
            if w.started:
                raise ProtocolError("Started twice")
            w.started = True
            w.started_at = time.monotonic()
            if w.payloads:
                w.payloads.pop(key, None)
            if w.kill_on_start and key in w.kill_on_start:  # cancelled after the worker took its ticket: dies now
                self._kill(w, KillReason.REQUESTED)
            listener.started(key, w.pid)
            return
        if not w.started:
            raise ProtocolError(f"{kind.__name__} before Started")
        if type(msg) is Progress:
            listener.progress(key, msg.fraction, msg.message)
            return
        outcome: Outcome
        if type(msg) is DoneOk:
            # Unpickled here, before COMPLETED is recorded: COMPLETED means result() returns.
            try:
                outcome = Returned(pickle.loads(msg.result))
            except BaseException as exc:  # user code ran: even SystemExit stays here, as this task's failure
                outcome = Undecodable(exc)
        elif type(msg) is DoneError:
            outcome = Raised(msg.failure)
        elif type(msg) is DoneBadResult:
            outcome = Unreturnable(msg.type_name, msg.reason)
        elif type(msg) is DoneTooLarge:
            outcome = TooLarge(msg.what, msg.size, self.max_message_size)
        else:  # pragma: no cover - the framer accepts worker messages only
            raise ProtocolError(f"unexpected {kind.__name__}")
        del self._jobs[key]
        del w.assigned[0]
        w.started = False
        ran = time.monotonic() - w.started_at
        w.ahead = HELD_AHEAD if ran * HELD_AHEAD <= HELD_BUDGET else max(1, int(HELD_BUDGET / ran))
        w.jobs_done += 1
        if self._open and w in self._open:
            self._open.remove(w)
        given: list[int] = []
        if w.state is WorkerState.BUSY and not w.exited:
            if w.assigned:
                self._expect_start(w)  # (its STARTED is often in this very read)
                if len(w.assigned) - 1 > w.ahead:
                    given = self._give_back_excess(w)
                self._maybe_open(w)
            elif self._max_tasks is not None and w.jobs_done >= self._max_tasks and not self._stopping:
                self._retire(w)
            elif len(self._jobs) < 2 or not self._take_over(w):  # (no job is held behind another)
                w.state = WorkerState.IDLE
                self._idle.append(w)
        listener.done(key, outcome)
        for held in given:
            listener.lost(held, Lost(w.pid, None, "", retryable=True, given_back=True))

    def _give_back_excess(self, w: WorkerProcess) -> list[int]:
        """Take back the newest jobs ``w`` holds beyond :attr:`~WorkerProcess.ahead`; return them (never started).

        A worker takes on held jobs judging by its last job; when a job turns out
        slower, the jobs it holds beyond its new budget are given back to the
        scheduler, so a more urgent task submitted meanwhile does not wait
        behind all of them. Those whose tickets the worker took already stay.
        """
        excess = w.assigned[1 + w.ahead :]
        taken = w.take_back()
        given = [key for key in excess if key in taken]
        for key in given:
            self._forget_held(w, key)
        self._regrant(w, taken - set(given))  # taken back with them (tickets come in order): granted again
        return given

    def _take_over(self, w: WorkerProcess) -> bool:
        """Give ``w``, free now, a job held ahead behind a running one on another worker; True if it got one.

        This is how a job sent ahead never waits behind a long job while a
        worker is free: its ticket is taken back from the busy worker (which
        then skips it) and the job is sent to ``w``.
        """
        if self._stopping or len(self._jobs) < 2:  # a held job waits behind another one
            return False
        for other in self.workers:
            if other is w or other.state is not WorkerState.BUSY or len(other.assigned) < 2 or not other.started:
                continue
            key = other.assigned[-1]
            taken = other.take_back()
            self._regrant(other, taken - {key})
            if key not in taken:
                continue  # the busy worker has just moved on to it
            other.assigned.pop()
            other.taken_back.discard(key)
            payload = other.payloads.pop(key)
            self._maybe_open(other)
            w.state = WorkerState.BUSY
            w.assigned.append(key)
            self._jobs[key] = w
            self._send_job(w, key, payload, ticketed=False)
            self._expect_start(w)
            self._maybe_open(w)
            return True
        return False

    def _forget_held(self, w: WorkerProcess, key: int) -> None:
        """Forget job ``key``, whose ticket was just taken back from ``w``: it never starts there."""
        del self._jobs[key]
        w.assigned.remove(key)
        w.payloads.pop(key, None)
        w.taken_back.discard(key)

    def _regrant(self, w: WorkerProcess, keys: set[int]) -> None:
        """Grant again, in the order the worker must meet them, tickets taken back with another job's."""
        for key in w.assigned:
            if key in keys:
                w.regrant(key)

    def _room(self, w: WorkerProcess) -> int:
        """How many more jobs busy ``w`` may hold now (pipelining)."""
        if w.state is not WorkerState.BUSY or w.exited or self._stopping or w.kill_on_start:
            return 0
        room = 1 + w.ahead - len(w.assigned)
        if self._max_tasks is not None:
            room = min(room, self._max_tasks - w.jobs_done - len(w.assigned))
        return max(room, 0)

    def _maybe_open(self, w: WorkerProcess) -> None:
        """Offer ``w``'s free held slots, if it has any (pipelining)."""
        if w not in self._open and self._room(w) > 0:
            self._open.append(w)

    def _on_ready(self, w: WorkerProcess) -> None:
        assert self._listener is not None
        w.state = WorkerState.IDLE
        w.ready = True
        self._backoff = 0.0
        self._failed_starts = 0
        self.start_error = None
        log.debug("worker %d ready", w.pid)
        if self._stopping:
            self._tell_to_stop(w)
            return
        if not self._take_over(w):
            self._idle.append(w)
        self._ready_count += 1
        if not self._all_ready and self._ready_count >= self.capacity:
            self._all_ready = True
            self._listener.all_ready()
        self._listener.capacity_changed()

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
        if w.timer is not None:
            w.timer.deadline = w.stop_deadline

    # ------------------------------------------------------------ the scheduler's calls
    def free_slots(self) -> int:
        """Idle workers, then the jobs busy workers may still hold behind their current one (pipelining)."""
        free = len(self._idle)
        for w in self._open:
            free += self._room(w)
        return free

    def claimable(self) -> tuple[int, int]:
        """Free slots and workers, leaving out workers whose job has run longer than ``HELD_BUDGET``."""
        slots = workers = len(self._idle)
        if self._jobs:
            recent = time.monotonic() - HELD_BUDGET
            for w in self.workers:
                if w.state is WorkerState.BUSY and not (w.started and w.started_at < recent):
                    workers += 1
                    if w in self._open:
                        slots += self._room(w)
        return slots, workers

    def held_ahead(self) -> int:
        return sum(len(w.assigned) - 1 for w in self.workers if len(w.assigned) > 1)

    @enable_ki_protection
    def dispatch(self, key: int, payload: bytes) -> None:
        if self._idle:
            w = self._idle.pop()
            w.state = WorkerState.BUSY
        else:
            w = self._open.pop(0)  # sent ahead: it starts when the worker's jobs before it end
        w.assigned.append(key)
        self._jobs[key] = w
        if len(w.assigned) == 1:
            self._send_job(w, key, payload, ticketed=False)  # nothing runs before it: it cannot be taken back
            self._expect_start(w)
            self._maybe_open(w)
        else:
            self._send_job(w, key, payload, ticketed=True)
            self._maybe_open(w)  # at the back: the next job goes to another worker with room

    @enable_ki_protection
    def interrupt(self, key: int) -> None:
        w = self._jobs.get(key)
        if w is not None and w.state is WorkerState.BUSY and w.started and w.assigned[0] == key:
            w.terminate(key)

    @enable_ki_protection
    def kill(self, key: int) -> None:
        """Kill job ``key``: its worker if it runs, else take it back (it then never starts).

        A job that has not started is taken back through its ticket and
        reported lost at once; the worker lives on. If the worker already took
        that ticket, the job starts any moment: the worker is killed when it
        says so. A running job's worker is killed, after the jobs held behind
        it are taken back; if the next one's ticket is gone, the worker has
        moved on: the running job has ended, its Done is on its way, and the
        others taken back are granted again. A job whose result is arriving has
        ended too: the kill waits for it. Such waits end with a kill if the
        worker sends nothing for :data:`_OWED_LIMIT`.
        """
        w = self._jobs.get(key)
        if w is None or w.state is WorkerState.DYING or w.state is WorkerState.DEAD:
            return
        if w.assigned[0] == key and (w.started or key not in w.payloads):
            # Running, or sent unticketed (to an idle worker): only killing the worker stops it.
            arriving = w.reader.framer.receiving
            if arriving is not None and arriving[1] == key and arriving[0] in _RESULT_KINDS:
                self._owe(w, key)  # it has ended, its result is arriving: a kill now would only lose it
                return
            if len(w.assigned) > 1:
                taken = w.take_back()
                if w.assigned[1] not in taken:
                    self._regrant(w, taken)
                    self._owe(w, key)
                    return  # it took its next job: this one has ended (its Done is in the pipe)
            self._kill(w, KillReason.REQUESTED)
            return
        if not self._withdraw(w, key, reassign=True):
            w.kill_on_start.add(key)  # the worker took its ticket: it reports STARTED soon
            self._owe(w, key)
            if self._open and w in self._open:
                self._open.remove(w)
            return
        assert self._listener is not None
        self._listener.lost(key, Lost(w.pid, None, "", retryable=True))
        if w.state is WorkerState.IDLE:
            self._listener.capacity_changed()  # an idle worker again: what is queued may run on it

    def _owe(self, w: WorkerProcess, key: int) -> None:
        """Job ``key``, being killed, waits for ``w`` to write what it owes (see :data:`_OWED_LIMIT`)."""
        w.owed.add(key)
        self._watch_owed(w)

    def _expect_start(self, w: WorkerProcess) -> None:
        """``w`` has a job to start, nothing before it: it owes its STARTED (see :data:`_OWED_LIMIT`).

        Armed once: a deadline already set is checked first (cheap on the path of every job).
        """
        if w.owed_deadline == math.inf:
            self._watch_owed(w)

    def _watch_owed(self, w: WorkerProcess) -> None:
        """Check in :data:`_OWED_LIMIT` seconds whether ``w`` still owes something and moved no byte."""
        w.owed_traffic = w.traffic()
        w.owed_deadline = trio.current_time() + _OWED_LIMIT
        if w.timer is not None:
            w.timer.deadline = min(w.stop_deadline, w.owed_deadline)

    def _check_owed(self, w: WorkerProcess) -> None:
        """The owed deadline passed: wait on while bytes still move, else kill ``w`` for the jobs waiting."""
        w.owed.intersection_update(w.assigned)  # those settled since are no longer owed anything
        to_start = bool(w.assigned) and not w.started  # its next job waits for its STARTED
        if not (w.owed or to_start) or w.state is not WorkerState.BUSY:
            w.owed.clear()
            w.owed_deadline = math.inf
        elif w.traffic() != w.owed_traffic or w.traffic_waiting():  # e.g. a large result on its way
            self._watch_owed(w)
        elif not w.owed:
            log.warning(
                "worker %d wrote nothing for %gs while task #%d waited to start on it; replacing it",
                w.pid,
                _OWED_LIMIT,
                w.assigned[0],
            )
            self._kill(
                w,
                KillReason.CRASH,
                f"it was stuck for {_OWED_LIMIT:g}s between jobs, before it started task #{w.assigned[0]} "
                "(on something the job before left behind: a child process, a replaced std stream)",
            )
        else:
            key = min(w.owed)
            what = "result" if key == w.assigned[0] and w.started else "STARTED"
            log.warning(
                "worker %d owes task #%d its %s but sent nothing for %gs; killing it", w.pid, key, what, _OWED_LIMIT
            )
            self._kill(w, KillReason.REQUESTED, f"it owed task #{key} its {what} but sent nothing for {_OWED_LIMIT:g}s")

    @enable_ki_protection
    def take_back(self, key: int) -> bool:
        """Take back job ``key`` if a worker holds it behind another and has not taken it: it never starts.

        The job is forgotten here (not reported lost); the worker lives on.
        """
        w = self._jobs.get(key)
        if w is None or w.state is not WorkerState.BUSY or key not in w.payloads:
            return False  # not held (running, or sent to an idle worker), or its worker is going
        return self._withdraw(w, key, reassign=False)

    def _withdraw(self, w: WorkerProcess, key: int, reassign: bool) -> bool:
        """Take back ``w``'s ticketed job ``key``; False if the worker took its ticket (it starts soon).

        Taken back, it will never start: the worker skips it and lives on; if it
        holds nothing else, it is free again (``reassign``: it may take over a
        job held behind another worker's).
        """
        taken = w.take_back()
        self._regrant(w, taken - {key})  # taken back with it (tickets come in order): grant them again
        if key not in taken:
            return False
        self._forget_held(w, key)
        if not w.assigned and w.state is WorkerState.BUSY and not w.exited:
            w.state = WorkerState.IDLE
            if w in self._open:
                self._open.remove(w)
            if not (reassign and self._take_over(w)):
                self._idle.append(w)
        else:
            self._maybe_open(w)
        return True

    @enable_ki_protection
    def begin_stop(self) -> None:
        self._stopping = True
        for w in list(self._idle):
            self._tell_to_stop(w)
        self._idle.clear()
        self._open.clear()

    async def wait_stopped(self) -> None:
        """Wait until no worker is left (nor being started).

        **Cancellation:** Only the wait is cancelled.
        """
        await self._no_workers.wait()

    def _check_no_workers(self) -> None:
        if not self.workers and not self._launching:
            self._no_workers.set()

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(
            workers_total=len(self.workers),
            workers_idle=len(self._idle),
            workers_busy=sum(1 for w in self.workers if w.assigned),
            restarts=self.restarts,
            crashes=self.crashes,
        )

    def worker_pids(self) -> frozenset[int]:
        return frozenset(w.pid for w in self.workers)

    def worker_of(self, key: int) -> int | None:
        w = self._jobs.get(key)
        return None if w is None else w.pid

    # ---------------------------------------------------------------- kill path
    def _kill(self, w: WorkerProcess, reason: KillReason, detail: str = "") -> None:
        """The kill path, step 1: signal. Its death is observed in _serve, reported in _on_exit."""
        if w.state in (WorkerState.DYING, WorkerState.DEAD):
            return
        if w in self._idle:
            self._idle.remove(w)
        if w in self._open:
            self._open.remove(w)
        w.state = WorkerState.DYING
        w.kill_reason = reason
        w.kill_detail = detail
        w.take_back()  # jobs not started yet never will: they are lost before they started
        w.kill()

    def _exit_safely(self, w: WorkerProcess) -> None:
        """_on_exit, but a failure in it can never stop the cleanup of the others."""
        try:
            self._on_exit(w)
        except Exception as exc:
            self.workers.discard(w)
            if w in self._idle:
                self._idle.remove(w)
            if w in self._open:
                self._open.remove(w)
            w.state = WorkerState.DEAD
            self._check_no_workers()
            assert self._listener is not None
            self._listener.failed(exc)
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()

    def _on_exit(self, w: WorkerProcess) -> None:
        """The kill path, steps 2-4 (and the whole story of a crash): reap, report, refill."""
        listener = self._listener
        assert listener is not None
        w.exited = True  # frames still in its pipe count, but it gets no new job
        self._drain(w)
        exitcode = w.reap()
        reason = w.kill_reason
        was_ready = w.ready
        stopping = w.state is WorkerState.STOPPING
        if w in self._idle:
            self._idle.remove(w)
        if w in self._open:
            self._open.remove(w)
        w.state = WorkerState.DEAD
        self.workers.discard(w)
        unasked = reason is None or reason is KillReason.CRASH
        if w.assigned:
            keys, w.assigned = w.assigned, []
            if unasked:
                self.crashes += 1
            log.info("worker %d running task #%d ended (%s)", w.pid, keys[0], describe_exit(exitcode))
            w.take_back()
            for i, key in enumerate(keys):
                del self._jobs[key]
                if i == 0 and w.started:
                    retryable = False
                elif key in w.payloads:
                    # Ticketed, and its pipe is read to the end: never started if its ticket was taken
                    # back, or if it never said STARTED (STARTED is written before a job begins, also
                    # when the worker took the ticket and died before that write).
                    retryable = key in w.taken_back or key not in w.said_started
                else:
                    # Sent to an idle worker: never started if it never said so (its pipe is read to the end).
                    retryable = key not in w.said_started
                listener.lost(key, Lost(w.pid, exitcode, w.kill_detail, retryable=retryable))
        elif not was_ready:
            error = w.init_error
            if error is None and reason is None and not stopping:
                # Died while starting (in the initializer or before it). Once could be a kill from
                # outside; several starts in a row failing is a failed start, like an initializer raising.
                self.crashes += 1
                self._failed_starts += 1
                log.warning("worker %d died before it was ready (%s)", w.pid, describe_exit(exitcode))
                if self._failed_starts >= _FAILED_STARTS or not self._all_ready:
                    error = WorkerInitError(
                        "",
                        f"worker {w.pid} {describe_exit(exitcode)} before it was ready (its stderr says why; "
                        "if your main module starts a TaskManager when imported, guard that code with "
                        "`if __name__ == '__main__':`)",
                        "",
                    )
            if error is not None:
                self.start_error = error
            if self.start_error is not None and (error is not None or not self._can_run_soon()):
                listener.start_failed(self.start_error, none_left=not self._can_run_soon())
        elif unasked and not stopping:
            self.crashes += 1
            log.warning("idle worker %d died (%s); replacing it", w.pid, describe_exit(exitcode))
        else:
            log.info("worker %d exited (%s)", w.pid, describe_exit(exitcode))
        self._check_no_workers()
        if not self._stopping and not w.retired:
            self.restarts += 1
            if was_ready:
                self._spawn()
            else:
                self._schedule_respawn()
        listener.capacity_changed()

    def _can_run_soon(self) -> bool:
        """True if some worker is ready, busy or still starting (and so may run queued jobs)."""
        return self._launching > 0 or any(w.state in _LIVE_STATES for w in self.workers)
