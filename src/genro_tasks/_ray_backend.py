"""The Ray backend: jobs run as Ray tasks on an existing (or a local) Ray cluster.

Three parts, each with one job:

* **Two threads** make every call into Ray; nothing Ray does ever runs on the
  event loop. The *owner* calls ``ray.init``, submits tasks, ``ray.cancel``
  and ``ray.shutdown``, taking commands from the trio thread on a queue: the
  jobs the scheduler dispatched during one pass of the event loop travel as
  one command, so the owner wakes once per batch, not once per job. The
  *collector* waits on the refs in flight (``ray.wait``), gathers every ready
  one with a single ``ray.get``, and one ``run_sync_soon`` hands the whole
  batch to the trio thread. (A callback per ref, ``ref.future()``, costs Ray's
  I/O thread about 100 µs of CPU per job; a ``ray.wait`` over the few refs in
  flight costs a fraction of that per batch.)
* **The tracker** is a TCP listener in the trio thread. The job's first action
  on its Ray worker is to send ``Started`` on its process's connection
  (:mod:`genro_tasks_worker._ray`); progress follows on the same connection, and
  its end-of-file is how the death of a killed worker is observed, on any node.
  Each connection is read as a plain socket (``wait_readable``, then one
  ``recv_into`` the framer's buffer, which takes every frame that arrived);
  with prefetch, 2 ms pass between reads, so that frames gather.
* **The trio side** (this class's methods) owns the state: which job runs
  where (``RayBackend._jobs``, the one task-to-handle mapping), and the one kill
  path: ``ray.cancel(force=True)`` → the ref fails → the worker's connection
  closes (its process is dead) → :meth:`~._backend.BackendListener.lost`.

Ray never re-runs a task here (``max_retries=0``): a worker or node death is
reported lost, never retryable, and the scheduler records WorkerCrashed.

If the application shuts Ray down under the backend (``ray.shutdown()``), the
threads notice (:meth:`RayBackend._ray_alive`) before their next Ray call, which
would otherwise start a new local Ray: the collector reports every job in flight
lost, and :meth:`RayBackend.serve` then fails, so the manager refuses more work.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import pickle
import queue
import secrets
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import trio

try:
    import ray
    import ray.exceptions
except ImportError as exc:  # the extra is not installed: say how to install it
    raise ImportError(
        f"genro_tasks.ray needs Ray, which could not be imported ({exc}): pip install 'genro-tasks[ray]'",
        name="ray",
    ) from exc
from trio.lowlevel import enable_ki_protection

from genro_tasks_worker._framing import Framer
from genro_tasks_worker._protocol import (
    PROGRESS,
    READY,
    STARTED,
    DoneBadResult,
    DoneError,
    DoneTooLarge,
    Failure,
    Message,
    Progress,
    ProtocolError,
    Ready,
    Started,
)
from genro_tasks_worker._ray import HOST_ID_SIZE, TOKEN_SIZE, TRACKER_MAX_MESSAGE, host_id, job_argument, job_function

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
from ._util import only_cancelled

log = logging.getLogger("genro_tasks")

#: How long a killed job's worker may take to close its tracker connection (die) once Ray says it is cancelled.
_DEATH_LIMIT = 10.0
#: How long stopping waits for Ray to report every job in flight after they were all cancelled.
_SETTLE_LIMIT = 15.0
#: How long joining a cluster at ``host:port`` waits for the head to accept a connection.
_PROBE_LIMIT = 10.0
#: How long a new tracker connection may take to send its token.
_HELLO_LIMIT = 10.0
#: How long the collector's ``ray.wait`` blocks before looking again at the refs in flight: a ref
#: submitted while it waits is seen only then (the jobs it already waits on still end at once).
_COLLECT_POLL = 0.01
#: How often the owner thread, idle, checks that Ray is still there while jobs are in flight: a
#: ``ray.wait`` under way when the application shuts Ray down may never return, so the collector
#: cannot be the only one to notice.
_ALIVE_POLL = 0.2
#: How long stopping waits for the collector once Ray is gone (it may be stuck in a Ray call for good).
_GONE_JOIN = 1.0
#: With prefetch, how long the collector may hold a job's end to report several together.
_GATHER_DELAY = 0.002
# Ray's calls without its automatic ``ray.init()``: if the application shut Ray down under this
# backend, they raise instead of starting a new local Ray.
_ray_wait = getattr(ray.wait, "__wrapped__", ray.wait)
_ray_get = getattr(ray.get, "__wrapped__", ray.get)
_ray_cancel = getattr(ray.cancel, "__wrapped__", ray.cancel)
_TRACKER_KINDS = frozenset({READY, STARTED, PROGRESS})
_STOP = ("stop",)


@dataclass(eq=False)
class _Worker:
    """One Ray worker process's connection to this backend's tracker."""

    pid: int = 0
    #: On this machine, in this pid namespace: its death can be seen on its pid too.
    local: bool = False
    closed: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False, slots=True)
class _Job:
    """A job handed to Ray, as the trio side knows it."""

    started: bool = False
    pid: int | None = None
    #: The worker's tracker connection (None until its Started frame arrived).
    worker: _Worker | None = None
    #: The kill was asked (``ray.cancel(force=True)``).
    killed: bool = False
    #: A graceful stop was asked (``ray.cancel(force=False)``).
    interrupted: bool = False
    progress: tuple[float | None, str | None] | None = None


class RayBackend(ExecutionBackend):
    """Run a TaskManager's jobs as Ray tasks: ``TaskManager(backend=RayBackend(...))``.

    Each job is one Ray task (``num_cpus=1`` unless ``task_options`` say
    otherwise, never retried by Ray). Statuses, progress, cancel and timeouts
    keep the promises of the process pool: see the README's "Running on a Ray
    cluster" for what differs.

    Args:
        address: The Ray cluster to join (``"auto"``, ``"ray://..."`` or
            ``"host:port"``); None starts a local Ray. If this process has
            already joined a Ray (``ray.init`` called before), that one is
            used whatever the address. A Ray this backend started is shut
            down with the manager; one it found is left running.
        max_workers: How many jobs run at once; None: the cluster's CPUs
            when the manager starts.
        init_options: More keyword arguments for ``ray.init`` (for example
            ``num_cpus`` or ``runtime_env``), used only if this backend
            starts or joins Ray.
        task_options: Ray task options for every job (``num_cpus``,
            ``resources``, ``runtime_env``...), as for ``.options()`` of a
            remote function; ``max_retries`` is always 0.
        tracker_host: The address of this machine that Ray workers connect
            back to (default: the address Ray uses for this node).
        prefetch: How many jobs beyond ``max_workers`` are handed to Ray
            ahead of time, so that a Ray worker finishing a job starts the
            next one without waiting for a round trip through this process
            (for many short jobs, a few times ``max_workers``: Ray then
            always has jobs queued). They stay PENDING until they really
            start and can be cancelled, but Ray runs them in the order they
            were handed over: a higher-priority task submitted later waits
            for them. While every slot is busy, the jobs ahead are topped
            up in batches of a quarter of ``prefetch`` (one wake-up of the
            owner thread per batch), and the starts and ends of jobs may be
            gathered a few at a time (a job's start or end is then reported
            up to 2 ms after its worker sent it). The default, 0, keeps
            priorities strict and reports every start and end at once.

    A backend serves one TaskManager, once.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        max_workers: int | None = None,
        init_options: dict[str, Any] | None = None,
        task_options: dict[str, Any] | None = None,
        tracker_host: str | None = None,
        prefetch: int = 0,
    ) -> None:
        if address is not None and (not isinstance(address, str) or not address):
            raise ValueError(f"RayBackend(address=...) must be a Ray address such as 'auto' or None, not {address!r}")
        if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)):
            raise ValueError(f"RayBackend(max_workers=...) must be a positive int or None, not {max_workers!r}")
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"RayBackend(max_workers=...) must be at least 1, not {max_workers}")
        for name, options in (("init_options", init_options), ("task_options", task_options)):
            if options is not None and not isinstance(options, dict):
                raise ValueError(f"RayBackend({name}=...) must be a dict of keyword arguments, not {options!r}")
        task_options = dict(task_options or {})
        if task_options.get("max_retries", 0) != 0:
            raise ValueError(
                "RayBackend(task_options=...) cannot set max_retries: a job is never run twice silently "
                "(a worker or node death fails its task with WorkerCrashed); resubmit it yourself if that is safe"
            )
        if task_options.get("num_returns", 1) != 1:
            raise ValueError(
                "RayBackend(task_options=...) cannot set num_returns: each job's Ray task returns one value "
                "(how the job ended); return a tuple from the job instead"
            )
        task_options["max_retries"] = 0
        task_options.setdefault("num_cpus", 1)
        try:  # Ray checks the names, types and values of the options (without joining Ray)
            ray.remote(job_function(("", 0, b""))).options(**task_options)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"RayBackend(task_options=...) is not valid for Ray: {exc}") from exc
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"RayBackend(prefetch=...) must be an int >= 0, not {prefetch!r}")
        if tracker_host is not None and (not isinstance(tracker_host, str) or not tracker_host):
            raise ValueError(f"RayBackend(tracker_host=...) must be a host name or address, not {tracker_host!r}")
        self.address = address
        self.capacity = max_workers or 0
        self._max_workers = max_workers
        self._prefetch = prefetch
        #: With prefetch, jobs are handed to Ray in batches of at least this many (one wake-up of the owner each).
        self._refill = max(1, prefetch // 4)
        self._init_options = dict(init_options or {})
        self._task_options = task_options
        self._tracker_host = tracker_host
        self._served = False
        self._listener: BackendListener | None = None
        #: The one task-to-handle mapping: job key -> what the trio side knows of it.
        self._jobs: dict[int, _Job] = {}
        self._workers: set[_Worker] = set()
        self._stopping = False
        self._token = secrets.token_bytes(TOKEN_SIZE)
        self._host_id = host_id()
        # Owner thread: commands in. The trio side gathers dispatched jobs in _to_submit
        # and its submitter task sends them as one command at its next pass (_batch_ready).
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._to_submit: list[tuple[int, bytes]] = []
        self._submit_scheduled = False
        self._batch_ready = trio.Event()
        # Collector thread: the refs in flight (key -> ref, under _refs_changed's lock);
        # it puts (key, value, error) of ended tasks in the inbox.
        self._refs: dict[int, Any] = {}
        self._refs_changed = threading.Condition()
        #: The refs of the jobs in flight when Ray went away (never freed: see _abandon).
        self._dead_refs: list[Any] = []
        #: The collector has reported every job in flight lost, Ray being gone.
        self._abandoned = False
        #: Set (under ``_refs_changed``) by the first :meth:`_abandon`: the jobs are reported lost once.
        self._abandoning = False
        self._collecting = True
        self._inbox: collections.deque[tuple[int, Any, BaseException | None]] = collections.deque()
        self._wake_scheduled = False
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._connected = trio.Event()
        self._connect_error: BaseException | None = None
        #: Why Ray went away under this backend (``ray.shutdown()`` by the application), once it did.
        self._gone: BaseException | None = None
        self._gone_event = trio.Event()
        self._owns_ray = False
        self._host = ""
        self._port = 0
        self._tracker_address: tuple[str, int, bytes] = ("", 0, b"")
        self._remote: Any = None
        #: The tracker's tasks; shielded, cancelled once every job has settled.
        self._tracker_scope = trio.CancelScope(shield=True)
        self._nursery: trio.Nursery | None = None
        self._inbox_ready = trio.Event()
        self._settled = trio.Event()
        self.crashes = 0

    # ------------------------------------------------------------------ serving
    @enable_ki_protection
    async def serve(self, listener: BackendListener) -> None:
        """Join Ray, open the tracker, and run jobs until cancelled (see ExecutionBackend.serve).

        **Cancellation:** How the backend is stopped: every job in flight is
        cancelled with ``ray.cancel(force=True)`` and reported lost once Ray
        says so and its worker is dead (shielded); a Ray this backend started
        is then shut down.
        """
        if self._served:
            raise RuntimeError("this RayBackend already served a TaskManager; create a new RayBackend for each one")
        self._served = True
        self._listener = listener
        self._trio_token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_owner, name="genro_tasks ray owner")
                await nursery.start(self._run_tracker, name="genro_tasks ray tracker")
                try:
                    await self._serve(listener)
                finally:
                    with trio.CancelScope(shield=True):
                        await self._stop_all()
                        self._tracker_scope.cancel()
                        self._commands.put(_STOP)
        except BaseException as exc:
            if not only_cancelled(exc):
                listener.failed(exc)
            raise

    async def _serve(self, listener: BackendListener) -> None:
        self._commands.put(("connect",))
        await self._connected.wait()
        if self._connect_error is not None:
            listener.start_failed(self._connect_error, none_left=True)
            await trio.sleep_forever()
        try:
            tracker = (await trio.open_tcp_listeners(0, host=self._host))[0]
        except OSError as exc:
            error = RuntimeError(
                f"RayBackend could not open its tracker on {self._host!r} ({exc}): "
                + (
                    "tracker_host must be an address of this machine that Ray workers can reach"
                    if self._tracker_host is not None
                    else "pass RayBackend(tracker_host=...), an address of this machine that Ray workers can reach"
                )
            )
            error.__cause__ = exc
            self._connect_error = error  # free_slots() stays 0
            listener.start_failed(error, none_left=True)
            await trio.sleep_forever()
        self._port = tracker.socket.getsockname()[1]
        self._tracker_address = (self._host, self._port, self._token)
        assert self._nursery is not None
        self._nursery.start_soon(self._accept, tracker)
        log.info("Ray backend ready: %d slots, tracker on %s:%d", self.capacity, self._host, self._port)
        listener.all_ready()
        listener.capacity_changed()
        await self._gone_event.wait()
        assert self._gone is not None
        raise self._gone  # the jobs in flight were reported lost; the manager fails what is queued

    async def _run_tracker(self, task_status: trio.TaskStatus[None]) -> None:
        """The trio side's own tasks (tracker, inbox), shielded: they outlive a cancel until every job settled."""
        with self._tracker_scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._pump)
                nursery.start_soon(self._submitter)
                task_status.started()
                await trio.sleep_forever()
        self._nursery = None

    async def _run_owner(self) -> None:
        await trio.to_thread.run_sync(self._owner_loop, abandon_on_cancel=False)

    # -------------------------------------------------------------- owner thread
    def _owner_loop(self) -> None:
        """The owner thread: every Ray call, in the order the trio side asked."""
        commands = self._commands
        collector = threading.Thread(target=self._collect_loop, name="genro_tasks ray collector", daemon=True)
        collector.start()
        try:
            while True:
                try:
                    batch = [commands.get(timeout=_ALIVE_POLL)]
                except queue.Empty:
                    if self._refs and not self._ray_alive():
                        self._abandon()  # the collector may be stuck in a wait Ray will never end
                    continue
                while True:
                    try:
                        batch.append(commands.get_nowait())
                    except queue.Empty:
                        break
                for command in batch:
                    if command is _STOP:
                        return
                    self._execute(command)
        finally:
            with self._refs_changed:
                self._collecting = False
                self._refs_changed.notify()
            collector.join(_SETTLE_LIMIT if self._gone is None else _GONE_JOIN)
            if collector.is_alive():  # pragma: no cover - stuck in a call into a Ray that is gone
                log.warning("Ray backend: the collector thread is stuck in a Ray call; leaving it behind")
            if self._owns_ray:
                try:
                    ray.shutdown()
                except Exception:  # pragma: no cover - nothing left to do about it
                    log.exception("ray.shutdown() failed")

    def _execute(self, command: tuple[Any, ...]) -> None:
        what = command[0]
        if what == "run":
            self._submit(command[1])
        elif what == "cancel":
            _, key, force = command
            if not self._ray_alive():
                return  # every job Ray had is reported lost by the collector
            ref = self._refs.get(key)
            if ref is not None:
                try:
                    _ray_cancel(ref, force=force)
                except (Exception, SystemExit) as exc:  # the task ended meanwhile, or Ray refuses: its end still comes
                    log.debug("ray.cancel of job #%d: %s", key, exc)
        else:
            assert what == "connect"
            try:
                self._connect()
            except BaseException as exc:
                error = RuntimeError(
                    f"RayBackend could not join Ray (address={self.address!r}): {exc}; start the cluster "
                    "(`ray start --head`) or pass RayBackend(address=...) the address of its head ('host:6379'), "
                    "or address=None to start a local Ray"
                )
                error.__cause__ = exc
                self._connect_error = error
            self._to_trio(self._connected.set)

    def _connect(self) -> None:
        if not ray.is_initialized():
            _probe(self.address or os.environ.get("RAY_ADDRESS"))
            options = {"include_dashboard": False, **self._init_options}
            ray.init(address=self.address, **options)
            self._owns_ray = True
        if self._max_workers is None:
            cpus = ray.cluster_resources().get("CPU", 0)  # type: ignore[no-untyped-call]
            per_job = self._task_options["num_cpus"] or 1
            self.capacity = max(1, math.floor(cpus / per_job))
        self._host = self._tracker_host or ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]

    def _submit(self, jobs: list[tuple[int, bytes]]) -> None:
        """The owner thread: hand a batch of jobs to Ray, then to the collector."""
        if self._remote is None:  # the tracker's address is known by the first job
            self._remote = ray.remote(job_function(self._tracker_address)).options(**self._task_options)
        remote = self._remote.remote
        alive = ray.is_initialized
        submitted: list[tuple[int, Any]] = []
        for key, payload in jobs:
            if self._gone is not None or not alive():  # .remote() would start a new local Ray
                self._ray_alive()
                self._deliver([(key, None, self._gone)])
                continue
            try:
                submitted.append((key, remote(job_argument(key, payload))))
            except BaseException as exc:
                self._deliver([(key, None, exc)])
        with self._refs_changed:
            if self._gone is None:
                self._refs.update(submitted)
                self._refs_changed.notify()
                return
            self._dead_refs.extend(ref for _key, ref in submitted)  # Ray went away meanwhile (see _abandon)
        self._deliver([(key, None, self._gone) for key, _ref in submitted])

    def _collect_loop(self) -> None:
        """The collector thread: gather the tasks that ended, a batch per ``ray.wait``, until stopped."""
        refs, changed = self._refs, self._refs_changed
        while True:
            with changed:
                while not refs and self._collecting and self._gone is None:
                    changed.wait()
                if not self._collecting:
                    return
                keys = {ref: key for key, ref in refs.items()}
            in_flight = list(keys)
            if not self._ray_alive():  # checked first: a Ray call now would start a new local Ray
                self._abandon()
                return
            # Beyond the slots, jobs wait in Ray's queue (prefetch) and keep its workers busy: as many
            # ends as there are such jobs may be gathered together, for at most _GATHER_DELAY.
            together = min(len(in_flight) - self.capacity, len(in_flight) // 2)
            try:
                ready: list[Any] = []
                if together > 1:
                    ready = _ray_wait(in_flight, num_returns=together, timeout=_GATHER_DELAY)[0]
                if not ready:
                    ready, rest = _ray_wait(in_flight, num_returns=1, timeout=_COLLECT_POLL)
                    if not ready:
                        continue
                    if rest:
                        ready += _ray_wait(rest, num_returns=len(rest), timeout=0)[0]
                ended = self._gather(keys, ready)
            except (Exception, SystemExit) as exc:  # Ray is broken, or gone (a wait it shuts down raises SystemExit)
                if not self._ray_alive():
                    self._abandon()
                    return
                log.exception("Ray backend: collecting results failed")  # pragma: no cover - Ray is broken
                ended = [(key, None, exc) for key in keys.values()]
            with changed:
                if self._abandoning:  # the owner thread reported these lost while this wait hung
                    return
                for key, _value, _error in ended:
                    del refs[key]
            self._deliver(ended)

    @staticmethod
    def _gather(keys: dict[Any, int], ready: list[Any]) -> list[tuple[int, Any, BaseException | None]]:
        """The values of the ``ready`` refs: one ``ray.get`` for all, or one each if some task failed."""
        try:
            values = _ray_get(ready)
        except Exception:
            ended: list[tuple[int, Any, BaseException | None]] = []
            for ref in ready:
                try:
                    ended.append((keys[ref], _ray_get(ref), None))
                except Exception as exc:
                    ended.append((keys[ref], None, exc))
            return ended
        return [(keys[ref], value, None) for ref, value in zip(ready, values, strict=True)]

    def _abandon(self) -> None:
        """Ray is gone: report every job in flight lost (once), and keep their refs forever.

        Called by the collector, or by the idle owner thread when the collector is stuck in a
        Ray call that will not return. A ref freed while ``ray.shutdown()`` tears Ray down
        makes Ray end the whole process; once that is over (or when this backend is
        collected) freeing one is harmless.
        """
        with self._refs_changed:
            if self._abandoning:
                return
            self._abandoning = True
            lost = list(self._refs.items())
            self._dead_refs.extend(ref for _key, ref in lost)
            self._refs.clear()
            self._collecting = False  # the refs of jobs submitted from now on are dropped with their error
            self._refs_changed.notify()
        self._inbox.extend((key, None, self._gone) for key, _ref in lost)
        self._abandoned = True  # after the extend: the trio side fails the manager once it settled these
        self._deliver([])

    def _ray_alive(self) -> bool:
        """A Ray-side thread: whether this process is still joined to Ray; if not, tell the trio side, once."""
        if self._gone is None and ray.is_initialized():
            return True
        if self._gone is None:
            self._gone = RuntimeError(
                "Ray was shut down under the TaskManager (ray.shutdown() was called while it ran): the jobs on Ray "
                "were lost and this TaskManager runs no more; shut the TaskManager down before calling ray.shutdown()"
            )
            with self._refs_changed:  # the collector reports the jobs in flight lost, then the trio side stops
                self._refs_changed.notify()
        return False

    def _deliver(self, ended: list[tuple[int, Any, BaseException | None]]) -> None:
        """A Ray-side thread: hand how these jobs ended to the trio thread (one wake-up per batch)."""
        self._inbox.extend(ended)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._to_trio(self._ring)

    def _ring(self) -> None:
        self._inbox_ready.set()

    def _to_trio(self, func: Any) -> None:
        assert self._trio_token is not None
        try:
            self._trio_token.run_sync_soon(func)
        except trio.RunFinishedError:  # pragma: no cover - the run ended under us
            pass

    # ----------------------------------------------------------------- tracker
    async def _accept(self, tracker: trio.SocketListener) -> None:
        assert self._nursery is not None
        async with tracker:
            while True:
                stream = await tracker.accept()
                self._nursery.start_soon(self._serve_worker, stream)

    async def _serve_worker(self, stream: trio.SocketStream) -> None:
        """Read one Ray worker's frames until its process closes the connection (dies)."""
        hello = b""
        ended = False
        try:
            with trio.move_on_after(_HELLO_LIMIT):
                while len(hello) < TOKEN_SIZE + HOST_ID_SIZE:
                    chunk = await stream.receive_some(TOKEN_SIZE + HOST_ID_SIZE - len(hello))
                    if not chunk:
                        ended = True
                        break
                    hello += chunk
        except trio.BrokenResourceError as exc:
            log.warning("Ray backend: a worker's tracker connection broke: %s", exc)
            ended = True
        if ended or not secrets.compare_digest(hello[:TOKEN_SIZE], self._token):
            if not ended:
                log.warning("Ray backend: a connection to the tracker did not open with its token; closed")
            await stream.aclose()
            return
        worker = _Worker(local=hello[TOKEN_SIZE:] == self._host_id)
        self._workers.add(worker)
        # The hot path reads the plain socket: one wait and one recv_into the framer's buffer per
        # wake-up, taking every frame that arrived meanwhile (trio's stream adds a recv and a checkpoint).
        sock = socket.socket(fileno=stream.socket.detach())
        try:
            framer = Framer(_TRACKER_KINDS, TRACKER_MAX_MESSAGE)
            buffer = framer.buffer()
            messages: list[Message] = []
            on_message = self._on_message
            # With prefetch, frames gather for 2 ms between reads: one wake-up takes several
            # (measured: about 20 us less of the trio thread's CPU per job than a read per frame).
            gather = _GATHER_DELAY if self._prefetch else 0.0
            while True:
                if gather:
                    await trio.sleep(gather)
                await trio.lowlevel.wait_readable(sock)
                try:
                    n = sock.recv_into(buffer)
                except BlockingIOError:  # pragma: no cover - it was readable
                    continue
                if not n:
                    return
                buffer = framer.received(n, messages)
                for msg in messages:
                    on_message(worker, msg)
                messages.clear()
        except (OSError, ProtocolError) as exc:
            log.warning("Ray backend: a worker's tracker connection broke: %s", exc)
        finally:
            self._workers.discard(worker)
            worker.closed.set()
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def _on_message(self, worker: _Worker, msg: Message) -> None:
        listener = self._listener
        assert listener is not None
        if type(msg) is Ready:
            worker.pid = msg.pid
            return
        if type(msg) is Started:
            job = self._jobs.get(msg.seq)
            if job is not None and not job.started:
                job.started = True
                job.worker = worker
                job.pid = worker.pid
                listener.started(msg.seq, worker.pid)
            return
        assert type(msg) is Progress
        job = self._jobs.get(msg.seq)
        if job is not None and job.worker is worker:
            job.progress = (msg.fraction, msg.message)
            listener.progress(msg.seq, msg.fraction, msg.message)

    # ------------------------------------------------------------ jobs ending
    @enable_ki_protection
    async def _pump(self) -> None:
        """Settle, in the trio thread, every job whose ref resolved (a batch per wake-up)."""
        inbox = self._inbox
        while True:
            await self._inbox_ready.wait()
            self._inbox_ready = trio.Event()
            self._wake_scheduled = False
            while inbox:
                self._settle(*inbox.popleft())
            if self._abandoned and not inbox:
                self._gone_event.set()

    def _settle(self, key: int, value: Any, error: BaseException | None) -> None:
        job = self._jobs.get(key)
        listener = self._listener
        if job is None or listener is None:
            return
        if error is not None:
            self._failed(key, job, error)
            return
        pid, result, end, latest = value
        if latest is not None:  # a list, out of Ray's msgpack
            latest = (latest[0], latest[1])
        if not job.started:  # the result overtook the Started frame: the job did start
            job.started = True
            job.pid = pid
            listener.started(key, pid)
        if latest is not None and latest != job.progress:  # so did its newest progress
            listener.progress(key, *latest)
        outcome: Outcome
        if end is None:
            try:
                outcome = Returned(pickle.loads(result))
            except BaseException as exc:  # user code ran: even SystemExit stays here, as this task's failure
                outcome = Undecodable(exc)
        elif type(done := pickle.loads(end)) is DoneError:
            outcome = Raised(done.failure)
        elif type(done) is DoneBadResult:
            outcome = Unreturnable(done.type_name, done.reason)
        else:  # pragma: no cover - the job side never sends others
            assert type(done) is DoneTooLarge
            outcome = TooLarge(done.what, done.size, TRACKER_MAX_MESSAGE)
        del self._jobs[key]
        listener.done(key, outcome)
        self._check_settled()

    def _failed(self, key: int, job: _Job, exc: BaseException) -> None:
        """Job ``key``'s Ray task failed: killed on request, stopped gracefully, or its worker died."""
        listener = self._listener
        assert listener is not None
        cancelled = isinstance(exc, ray.exceptions.TaskCancelledError)
        if cancelled and job.interrupted and not job.killed:
            # A graceful stop that ended the job: the scheduler records it CANCELLED.
            del self._jobs[key]
            name = "genro_tasks_worker.CancelRequested"
            listener.done(key, Raised(Failure(None, name, "the task was cancelled", f"{name}: the task was cancelled")))
            self._check_settled()
            return
        worker = job.worker
        if job.killed and worker is not None and self._nursery is not None:
            # Its process is dying: report it once its connection closes, so "lost" means "dead".
            self._nursery.start_soon(self._lost_when_dead, key, job, exc)
            return
        self._lost(key, job, exc)

    async def _lost_when_dead(self, key: int, job: _Job, exc: BaseException) -> None:
        """Report a killed job lost once its worker is dead: its connection closed, and (here) its pid exited."""
        worker = job.worker
        assert worker is not None
        with trio.move_on_after(_DEATH_LIMIT) as late:
            await worker.closed.wait()
            if worker.local:
                await _wait_exited(worker.pid)
        if late.cancelled_caught:
            log.warning("Ray worker %d still alive %gs after its job was killed", worker.pid, _DEATH_LIMIT)
        self._lost(key, job, exc)

    def _lost(self, key: int, job: _Job, exc: BaseException) -> None:
        if self._jobs.get(key) is not job:
            return
        del self._jobs[key]
        detail = ""
        if not job.killed:
            self.crashes += 1
            detail = _ray_detail(exc)
            log.warning("Ray job #%d lost: %s", key, detail)
        assert self._listener is not None
        self._listener.lost(key, Lost(job.pid, None, detail, retryable=False))
        self._listener.capacity_changed()
        self._check_settled()

    def _check_settled(self) -> None:
        if not self._jobs:
            self._settled.set()

    async def _stop_all(self) -> None:
        """Kill every job in flight, wait for Ray to say so (with a limit), report the rest lost."""
        self._stopping = True
        for key, job in self._jobs.items():
            if not job.killed:
                job.killed = True
                self._cancel(key, force=True)
        if self._jobs:
            self._settled = trio.Event()
            with trio.move_on_after(_SETTLE_LIMIT):
                await self._settled.wait()
        for key, job in list(self._jobs.items()):
            log.warning("Ray did not report job #%d after its kill; reporting it lost", key)
            self._lost(key, job, RuntimeError("Ray did not report the cancelled task"))

    # ------------------------------------------------------------ the scheduler's calls
    def free_slots(self) -> int:
        if self._stopping or not self._connected.is_set() or self._connect_error is not None or self._gone:
            return 0
        in_flight = len(self._jobs)
        free = self.capacity + self._prefetch - in_flight
        if free < self._refill and in_flight >= self.capacity:
            return 0  # every slot is busy and Ray holds jobs ahead: top them up in batches
        return free

    @enable_ki_protection
    def dispatch(self, key: int, payload: bytes) -> None:
        self._jobs[key] = _Job()
        self._to_submit.append((key, payload))
        if not self._submit_scheduled:  # the jobs dispatched in this pass go to the owner together
            self._submit_scheduled = True
            self._batch_ready.set()  # wakes the submitter in the next pass (no syscall, unlike run_sync_soon)

    def _cancel(self, key: int, *, force: bool) -> None:
        self._send_batch()  # a job dispatched in this very pass is submitted before its cancel
        self._commands.put(("cancel", key, force))

    async def _submitter(self) -> None:
        """Send the jobs dispatched during one pass of the event loop to the owner thread, together."""
        while True:
            await self._batch_ready.wait()
            self._batch_ready = trio.Event()
            self._send_batch()

    def _send_batch(self) -> None:
        self._submit_scheduled = False
        batch, self._to_submit = self._to_submit, []
        if batch:
            self._commands.put(("run", batch))

    @enable_ki_protection
    def interrupt(self, key: int) -> None:
        job = self._jobs.get(key)
        if job is not None and not job.interrupted and not job.killed:
            job.interrupted = True
            self._cancel(key, force=False)

    @enable_ki_protection
    def kill(self, key: int) -> None:
        job = self._jobs.get(key)
        if job is not None and not job.killed:
            job.killed = True
            self._cancel(key, force=True)

    @enable_ki_protection
    def begin_stop(self) -> None:
        self._stopping = True

    async def wait_stopped(self) -> None:
        """Return at once: Ray's workers are Ray's (the jobs in flight have settled already).

        **Cancellation:** Nothing to cancel.
        """
        await trio.lowlevel.checkpoint()

    def statistics(self) -> BackendStatistics:
        busy = sum(1 for job in self._jobs.values() if job.started)
        return BackendStatistics(
            workers_total=self.capacity,
            workers_idle=max(0, self.capacity - busy),
            workers_busy=busy,
            restarts=0,
            crashes=self.crashes,
        )

    def worker_pids(self) -> frozenset[int]:
        """Pids of the Ray worker processes connected to this backend's tracker (on any node)."""
        return frozenset(w.pid for w in self._workers if w.pid)

    def worker_of(self, key: int) -> int | None:
        job = self._jobs.get(key)
        return None if job is None else job.pid


async def _wait_exited(pid: int) -> None:
    """Wait until process ``pid`` (of this machine) has exited, woken by its pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


def _probe(address: str | None) -> None:
    """Fail at once if nothing listens at a cluster address ``host:port`` (``ray.init`` would retry for minutes)."""
    if address is None:
        return
    scheme, _, rest = address.rpartition("://")
    if scheme and scheme != "ray":  # not an address this backend can probe
        return
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isdigit():  # "auto", "local", or not host:port: Ray decides
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_LIMIT).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port} within {_PROBE_LIMIT:g}s ({exc})") from exc


def _ray_detail(exc: BaseException) -> str:
    """A short account of why Ray says a task failed."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()
    first = next((line for line in text if line.strip()), "")
    if len(first) > 300:
        first = first[:300] + "..."
    return f"Ray reported {name}" + (f": {first}" if first else "")
