"""The seam between the scheduler and whatever runs the jobs.

The :class:`~._scheduler.Scheduler` decides *what* runs and what each event
means for a task; an :class:`ExecutionBackend` decides *where* and *how*: it
owns the workers (processes, or remote tasks on a cluster), the wire to them
and the kill path. The two speak only through this module:

* scheduler → backend: :meth:`ExecutionBackend.dispatch`,
  :meth:`~ExecutionBackend.interrupt`, :meth:`~ExecutionBackend.kill`,
  :meth:`~ExecutionBackend.begin_stop`, and :meth:`~ExecutionBackend.serve`
  (the backend's life, run by the scheduler's task);
* backend → scheduler: the :class:`BackendListener` callbacks (``started``,
  ``progress``, ``done``, ``lost``, ``capacity_changed``, ...).

Tasks are named by a *key* (an int the scheduler chose, unique among the
jobs in flight). A backend never sees a task record and never decides a
task's status; the scheduler never sees a pid's meaning, a pipe or a signal.
Every callback is synchronous and is made after the backend's own state is
consistent, so the scheduler may call back into the backend (to dispatch the
next job) from inside it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

from genro_tasks_worker._protocol import Failure


@dataclass(slots=True)
class Returned:
    """The job returned ``value`` (already unpickled in this process)."""

    value: Any


@dataclass(slots=True)
class Raised:
    """The job raised; ``failure`` is the error as the worker sent it (unpickled only by ``result()``)."""

    failure: Failure


@dataclass(slots=True)
class Unreturnable:
    """The job returned a value the worker could not send (pickling it failed there)."""

    type_name: str
    why: str


@dataclass(slots=True)
class TooLarge:
    """The job's ``what`` (its result, error report, progress...) was ``size`` bytes, over ``limit``."""

    what: str
    size: int
    limit: int


@dataclass(slots=True)
class Undecodable:
    """The job's value arrived but cannot be unpickled in this process."""

    error: BaseException


#: How a job ended, as the backend reports it. (Not frozen: one is built per task, and
#: building a frozen dataclass costs several times more; nobody changes them.)
Outcome = Returned | Raised | Unreturnable | TooLarge | Undecodable


@dataclass(frozen=True, slots=True)
class Lost:
    """A job's worker died, or was killed, before the job reported its end; or it was given back.

    Attributes:
        worker: The worker's identity (its pid for processes), if known.
        exitcode: Exit code, negative for a signal; None if unknown.
        detail: Why the backend itself killed it (it misbehaved), else "".
        retryable: True if the job surely never began (sending it again
            cannot run it twice).
        given_back: The backend took the job back, never started, from a live
            worker that held it (it held more work than its budget): queue
            it again; no death, so it does not count as a requeue.
    """

    worker: int | None
    exitcode: int | None
    detail: str
    retryable: bool
    given_back: bool = False


@dataclass(frozen=True, slots=True)
class BackendStatistics:
    """Counters a backend keeps about its workers."""

    workers_total: int
    workers_idle: int
    workers_busy: int
    restarts: int
    crashes: int


class BackendListener(Protocol):
    """What a backend reports to (implemented by the scheduler)."""

    def started(self, key: int, worker: int) -> None:
        """The job really began on ``worker`` (pid): the task is RUNNING."""

    def progress(self, key: int, fraction: float | None, message: str | None) -> None:
        """The job reported progress (already coalesced by the worker)."""

    def done(self, key: int, outcome: Outcome) -> None:
        """The job ended on its own; its worker is free again (or retiring)."""

    def lost(self, key: int, lost: Lost) -> None:
        """The job's worker is dead (killed on request, or it crashed)."""

    def capacity_changed(self) -> None:
        """A worker became ready or went away: dispatch, and tell watchers."""

    def all_ready(self) -> None:
        """Every initial worker is ready: startup is complete."""

    def start_failed(self, error: BaseException, none_left: bool) -> None:
        """A worker could not start; ``none_left``: no worker can run queued jobs now."""

    def failed(self, error: BaseException) -> None:
        """The backend's own machinery broke: nothing it runs can be trusted."""


class ExecutionBackend(ABC):
    """Runs jobs for one scheduler. Implementations: :class:`~._process_backend.ProcessBackend`.

    The scheduler calls :meth:`serve` once, in its own task, and the other
    methods from the same trio thread; none of them blocks.
    """

    #: How many jobs may run at once.
    capacity: int

    @abstractmethod
    async def serve(self, listener: BackendListener) -> None:
        """Start the workers and run them until cancelled; report everything to ``listener``.

        On the way out (cancelled, or failed), every worker is killed and
        every job still in flight is reported :meth:`~BackendListener.lost`.

        **Cancellation:** Cancelling it is how the backend is stopped: it
        kills what is left (shielded) and returns only once all is dead.
        """

    @abstractmethod
    def free_slots(self) -> int:
        """How many jobs :meth:`dispatch` accepts right now."""

    @abstractmethod
    def dispatch(self, key: int, payload: bytes) -> None:
        """Start the job ``payload`` (a pickled call) under ``key``; needs a free slot.

        A backend may accept a job for a worker that is busy, to start it the
        moment its current job ends (see :meth:`held_ahead`).
        """

    def held_ahead(self) -> int:
        """How many dispatched jobs wait behind another job on their worker (they count as queued)."""
        return 0

    def claimable(self) -> tuple[int, int]:
        """What a shared store may claim tasks for: ``(slots, workers)``.

        ``slots``: like :meth:`free_slots`, but without the room behind a job
        that has run long (a task claimed for it would wait there while
        another process may have a worker free). ``workers``: how many
        workers are free or busy with a job that has not run long (the
        claims' look-ahead is per such worker). By default, every slot and
        every worker.
        """
        return self.free_slots(), self.capacity

    def take_back(self, key: int) -> bool:
        """Take back dispatched job ``key`` if it waits behind another job and will never start now.

        True: the backend has forgotten it (it reports nothing more about it).
        False: it runs, or may start any moment; it goes on as any dispatched job.
        """
        return False

    @abstractmethod
    def interrupt(self, key: int) -> None:
        """Ask the job to stop (it sees CancelRequested); it may end on its own."""

    @abstractmethod
    def kill(self, key: int) -> None:
        """Kill the job's worker now; :meth:`~BackendListener.lost` follows once it is dead."""

    @abstractmethod
    def begin_stop(self) -> None:
        """Let idle workers exit and start no new ones (jobs in flight finish)."""

    @abstractmethod
    async def wait_stopped(self) -> None:
        """Wait until every worker has exited after :meth:`begin_stop`.

        **Cancellation:** Only the wait is cancelled; the workers keep stopping.
        """

    @abstractmethod
    def statistics(self) -> BackendStatistics:
        """Counters of the workers."""

    def worker_pids(self) -> frozenset[int]:
        """Pids of the live worker processes (empty if the workers are not processes)."""
        return frozenset()

    def worker_of(self, key: int) -> int | None:
        """Pid of the worker process the job ``key`` was handed to, if any (for tests)."""
        return None
