"""The TaskManager facade: the public API, thin.

It checks every argument at the call, then delegates: records and live views
to the registry (:mod:`._registry`), the queue and every transition to the
scheduler (:mod:`._scheduler`), the workers to the backend
(:mod:`._process_backend`). It never changes a task's state itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import trio
from trio.lowlevel import enable_ki_protection

from genro_tasks_worker._protocol import DEFAULT_MAX_MESSAGE_SIZE

from ._backend import ExecutionBackend
from ._errors import ManagerClosed, QueueFull
from ._launch import default_context
from ._many import AllEnded, AsCompleted
from ._options import DEFAULT_OPTIONS, Call, SubmitMethods, TaskOptions
from ._owner import RunOwner
from ._process_backend import ProcessBackend
from ._registry import MemoryRegistry, TaskRegistry
from ._scheduler import Scheduler
from ._store import SQLiteStore, as_store
from ._submission import Job, id_in_use, prepare, prepare_initializer
from ._task import GroupInfo, TaskInfo, TaskManagerStatistics, TaskRecord, TaskStatus
from ._validate import check_bool, check_count, check_message_size, check_seconds, parse_status
from ._watch import ChangeStream, TaskWatcher

T = TypeVar("T")

log = logging.getLogger("genro_tasks")

#: How long ``run()`` waits, shielded, for the kill of a task whose caller was cancelled.
_CANCEL_LIMIT = 10.0


class TaskManager(SubmitMethods):
    """Run functions in dedicated worker processes and track every task precisely.

    A scheduler task (a trio system task, so no nursery is needed) owns the
    queue and ``max_workers`` worker processes. A task is PENDING until a
    worker says it started the job, then RUNNING, then exactly one of
    COMPLETED, FAILED or CANCELLED. Cancelling a running task kills its
    worker process and everything the job spawned.

    Example::

        async with TaskManager(max_workers=2) as tm:
            task_id = tm.submit(export_report, 123, format="pdf")
            print(await tm.status(task_id))
            path = await tm.result(task_id)

    Args:
        max_workers: Number of worker processes; ``None`` means ``os.cpu_count()``.
        start_method: ``"forkserver"`` (default: a worker starts in a few
            milliseconds) or ``"spawn"`` (a fresh interpreter per worker).
        initializer: Called as ``initializer(*initargs)`` in every new
            worker before it takes tasks (must be picklable).
        initargs: Arguments for ``initializer``.
        max_tasks_per_worker: Replace a worker after it ran this many tasks
            (``None``: never).
        max_queued: Most tasks allowed to wait in the queue at once;
            ``submit`` raises QueueFull beyond it, ``submit_wait`` waits.
            ``None``: unbounded.
        max_finished: Most finished tasks (with their results) kept for
            ``info``/``result``; the oldest finished are forgotten first.
        finished_ttl: Seconds a finished task is kept (``None``: no age limit).
            With a store, both apply to the whole file from the moment this
            manager opens it: give every manager on one store the same limits
            (a client-only one too).
        max_message_size: Largest message, in bytes, between this process
            and a worker (default 1 GiB; at least 1 MiB): a pickled job
            (``submit`` raises MessageTooLarge beyond it), a pickled result,
            an error report, a progress message. A task whose result is
            larger fails with MessageTooLarge. It bounds what one worker
            can make this process buffer, however its frames claim more.
        backend: Run the jobs elsewhere than in local worker processes, e.g.
            ``RayBackend(...)`` from :mod:`genro_tasks.ray`. The process
            pool's options (``max_workers``, ``start_method``,
            ``initializer``, ``initargs``, ``max_tasks_per_worker``,
            ``max_message_size``) and the ``memory_limit`` task option then
            do not apply: passing them raises ValueError.
        store: Where the tasks live. ``None`` (default): in this process's
            memory. A path (str or os.PathLike) or an :class:`SQLiteStore`:
            in that SQLite file, shared by every manager of every process
            that opens it and kept across restarts (see the README section
            "Several processes and restarts"). With a store,
            ``max_workers=0`` makes a client-only manager: it runs no job
            and claims nothing, but submits, lists, watches and cancels
            every task of the store and reads their results.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        start_method: str = "forkserver",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_queued: int | None = None,
        max_finished: int = 10_000,
        finished_ttl: float | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        backend: ExecutionBackend | None = None,
        store: str | os.PathLike[str] | SQLiteStore | None = None,
    ) -> None:
        self._store = as_store(store)
        if backend is not None:
            _refuse_process_options(
                backend,
                max_workers=max_workers is not None,
                start_method=start_method != "forkserver",
                initializer=initializer is not None,
                initargs=initargs != (),
                max_tasks_per_worker=max_tasks_per_worker is not None,
                max_message_size=max_message_size != DEFAULT_MAX_MESSAGE_SIZE,
            )
        #: The backend given by the caller (None: a ProcessBackend made at startup).
        self._given_backend = backend
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if not (max_workers == 0 and self._store is not None and type(max_workers) is int):
            if max_workers == 0 and type(max_workers) is int:
                raise ValueError(
                    "max_workers=0 (a client-only manager that runs no job) needs a store: "
                    "TaskManager(max_workers=0, store='path/to/tasks.db')"
                )
            check_count("max_workers", max_workers, allow_none=False)
        check_count("max_tasks_per_worker", max_tasks_per_worker)
        check_count("max_queued", max_queued)
        check_count("max_finished", max_finished, allow_none=False)
        finished_ttl = check_seconds("finished_ttl", finished_ttl)
        if not isinstance(start_method, str):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', not {start_method!r}")
        check_message_size(max_message_size)
        initargs, self._init_payload = prepare_initializer(initializer, initargs)
        self._max_workers = max_workers
        self._ctx = default_context(start_method)
        self._start_method = start_method
        self._max_tasks = max_tasks_per_worker
        self._max_queued = max_queued
        self._max_message_size = max_message_size
        #: submit() calls refused with QueueFull.
        self._rejected = 0
        #: The trio run this manager belongs to (set by startup()).
        self._owner = RunOwner()
        self._registry: TaskRegistry
        if self._store is None:
            self._registry = MemoryRegistry(max_finished, finished_ttl, self._owner.now)
        else:
            from ._store._registry import StoreRegistry

            self._registry = StoreRegistry(self._store, max_finished, finished_ttl, self._owner.now)
        self._backend: ExecutionBackend | None = None
        self._scheduler: Scheduler | None = None
        self._running = False
        self._shut_down = False
        self._seq = 0

    # ------------------------------------------------------------------ lifespan
    @property
    def is_running(self) -> bool:
        """True between a successful ``startup()`` and the start of ``shutdown()``.

        Also False once the scheduler has failed (see SupervisorFailed).
        """
        return self._running and self._scheduler is not None and self._scheduler.failure is None

    @property
    def max_workers(self) -> int:
        """The number of worker processes this manager keeps (a given backend's capacity)."""
        if self._given_backend is not None:
            return self._given_backend.capacity
        return self._max_workers

    async def startup(self) -> None:
        """Start the scheduler and the worker processes; return when all are ready.

        Callable from any trio task (an ASGI lifespan handler, a pytest-trio
        fixture): the scheduler runs as a trio system task, so no nursery
        is needed. Calling it on a running manager does nothing.

        Raises:
            RuntimeError: The worker processes could not be started (the
                message says why); nothing is left running.

        **Cancellation:** If cancelled, the workers started so far are killed
        and the manager stays stopped.
        """
        if self._running:
            return
        scheduler = self._scheduler
        if scheduler is not None:
            if not self._shut_down and not scheduler.finished.is_set():
                await scheduler.wait_started()  # a concurrent startup(): share its outcome
                return
            raise RuntimeError("this TaskManager was shut down; create a new one")
        self._owner.claim()
        registry = self._registry
        if self._given_backend is not None:
            self._backend = self._given_backend
        elif self._max_workers == 0:
            from ._store._client import NoWorkers

            self._backend = NoWorkers()
        else:
            self._backend = ProcessBackend(
                self._max_workers, self._ctx, self._init_payload, self._max_tasks, self._max_message_size
            )
        hub = registry.hub
        if self._store is None:
            scheduler = Scheduler(self._backend, registry.changed, hub.room_freed, hub.close)
        else:

            def on_end() -> None:
                registry.detach()
                hub.close()

            def give_back(rec: TaskRecord) -> None:
                registry.release([rec])

            scheduler = Scheduler(self._backend, registry.changed, hub.room_freed, on_end, registry.on_idle, give_back)
            await registry.open(scheduler)
        self._scheduler = scheduler
        trio.lowlevel.spawn_system_task(scheduler.run, name="genro_tasks scheduler")
        try:
            await scheduler.wait_started()
        except BaseException:
            with trio.CancelScope(shield=True):
                await scheduler.stop(wait=False, cancel_pending=True)
            self._registry.hub.close()
            raise
        self._running = True
        if self._given_backend is None:
            log.info("TaskManager started with %d %s workers", self._max_workers, self._start_method)
        else:
            log.info("TaskManager started on %s (%d slots)", type(self._backend).__name__, self._backend.capacity)

    async def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop accepting tasks, settle the ones in flight, and stop every worker.

        Args:
            wait: If True, running tasks finish normally (and queued ones
                too, unless ``cancel_pending``). If False, queued tasks are
                CANCELLED and running ones are killed and recorded CANCELLED.
            cancel_pending: If True, queued tasks are CANCELLED at once.

        After it returns no worker process remains, ``submit`` raises
        :class:`ManagerClosed`, and ``info``/``result`` still answer for
        every task. Calling it again does nothing.

        **Cancellation:** If cancelled while waiting for tasks to finish, it
        kills every worker (shielded), records their tasks CANCELLED, and
        then lets the cancellation through: no process is left behind.
        """
        check_bool("shutdown(wait=...)", wait)
        check_bool("shutdown(cancel_pending=...)", cancel_pending)
        scheduler = self._scheduler
        if scheduler is None:
            return
        self._running = False
        self._shut_down = True
        self._registry.hub.room_freed()  # submit_wait callers see the manager closed
        if self._store is not None and scheduler.accepting:
            # The queue is the store's: what this process claimed but never started goes back to it.
            self._registry.release(scheduler.give_back_queued())
        try:
            await scheduler.stop(wait=wait, cancel_pending=cancel_pending)
        finally:
            self._registry.hub.close()
            with trio.CancelScope(shield=True):
                await self._registry.close()

    async def __aenter__(self) -> TaskManager:
        """Start the manager (see :meth:`startup`).

        **Cancellation:** As :meth:`startup`: the workers started so far are killed.
        """
        await self.startup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Shut down: waiting for tasks on a clean exit, killing them if the block raised.

        **Cancellation:** As :meth:`shutdown`: if cancelled while waiting, every
        worker is killed (shielded) before the cancellation goes through.
        """
        await self.shutdown(wait=exc_type is None)

    # -------------------------------------------------------------------- submit
    # submit(), submit_wait() and run() are SubmitMethods', shared with the option views.
    def _submit_to(self) -> tuple[TaskManager, TaskOptions]:
        return self, DEFAULT_OPTIONS

    def _submit(self, call: Call, options: TaskOptions) -> str:
        """The one way in: every submit of the manager and its views."""
        return self._submit_record(call, options).task_id

    def _submit_record(self, call: Call, options: TaskOptions) -> TaskRecord:
        """:meth:`_submit`, returning the new record (for ``run`` and ``tm.map``)."""
        self._check_owner("submit")
        if options.memory_limit is not None and self._given_backend is not None:
            raise _no_memory_limit(self._given_backend)
        job = prepare(call, options, self._registry.__contains__, self._max_message_size)
        return self._enqueue(job, wait_for_room=False)

    async def _submit_wait(self, call: Call, options: TaskOptions) -> str:
        self._check_owner("submit_wait")
        if options.memory_limit is not None and self._given_backend is not None:
            raise _no_memory_limit(self._given_backend)
        job = prepare(call, options, self._registry.__contains__, self._max_message_size)
        while True:
            scheduler = self._scheduler
            if (
                self._max_queued is None
                or scheduler is None
                or not self._running
                or not scheduler.accepting
                or scheduler.queued + self._registry.waiting() < self._max_queued
            ):
                await trio.lowlevel.checkpoint_if_cancelled()
                return self._enqueue(job, wait_for_room=True).task_id
            await self._registry.hub.wait_room()

    @enable_ki_protection
    def _enqueue(self, job: Job, *, wait_for_room: bool) -> TaskRecord:
        """Record a prepared job and hand it to the scheduler (no await: atomic)."""
        scheduler = self._scheduler
        if not self._running or scheduler is None or not scheduler.accepting or scheduler.finished.is_set():
            raise self._closed_error()
        if (
            not wait_for_room
            and self._max_queued is not None
            and scheduler.queued + self._registry.waiting() >= self._max_queued
        ):
            self._rejected += 1
            raise QueueFull(
                f"{scheduler.queued + self._registry.waiting()} tasks are already queued "
                f"(max_queued={self._max_queued}); retry later, "
                "or use 'await tm.submit_wait(...)' to wait for room"
            )
        task_id = job.task_id
        if task_id in self._registry:  # another submit may have taken it meanwhile
            raise id_in_use(task_id)
        options = job.options
        self._seq += 1
        rec = TaskRecord(
            self._seq,
            task_id,
            job.name,
            job.payload,
            job.metadata,
            options.timeout,
            options.priority,
            options.memory_limit,
            options,
        )
        self._registry.admit(rec, scheduler, chosen_id=job.chosen_id)
        return rec

    def _closed_error(self) -> ManagerClosed:
        scheduler = self._scheduler
        if scheduler is None:
            return ManagerClosed(
                "TaskManager not started: await tm.startup() first (or use 'async with TaskManager()')"
            )
        if scheduler.failure is not None:
            return ManagerClosed(f"TaskManager stopped because its supervisor failed: {scheduler.failure!r}")
        return ManagerClosed("TaskManager is shut down: it accepts no new tasks; create and start a new one")

    # ------------------------------------------------------------------- queries
    async def status(self, task_id: str) -> TaskStatus:
        """Return the task's current status.

        Raises:
            KeyError: ``Task not found: <id>``.

        **Cancellation:** Returns at once; cancelling it has no effect on the task.
        """
        await trio.lowlevel.checkpoint()
        return (await self._registry.lookup(task_id)).status

    async def info(self, task_id: str) -> TaskInfo:
        """Return a snapshot of the task that never changes under you.

        Raises:
            KeyError: ``Task not found: <id>``.

        **Cancellation:** Returns at once; cancelling it has no effect on the task.
        """
        await trio.lowlevel.checkpoint()
        return (await self._registry.lookup(task_id)).snapshot()

    async def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait for the task to finish and return its value, or raise how it ended.

        Args:
            task_id: The task's id.
            timeout: Seconds to wait; ``None`` waits as long as it takes.

        Returns:
            What the job returned (a fresh unpickled object, cached per task).

        Raises:
            KeyError: ``Task not found: <id>``.
            TimeoutError: ``timeout`` ran out first; the task is left alone.
            ValueError: ``timeout`` is not a non-negative finite number of seconds.
            TaskCancelled: The task was cancelled.
            TaskTimeout: The task exceeded its own ``timeout``.
            WorkerCrashed: Its worker process died mid-task.
            UnpicklableResult: It returned a value that cannot be pickled.
            RemoteError: It raised an exception that could not be transported.
            Exception: Whatever the job raised, with the worker's frames in
                its traceback and its chained causes.
            RuntimeError: Called from outside the trio run that owns the manager.

        **Cancellation:** Cancelling the wait leaves the task running; use
        :meth:`run` if the task should die with its caller.
        """
        rec = await self._registry.lookup(task_id)
        self._check_owner("result")
        timeout = check_seconds("result(timeout=...)", timeout, task_id=task_id, allow_zero=True)
        if not rec.status.is_terminal:
            if timeout is None:
                await rec.wait_done()
            else:
                with trio.move_on_after(timeout):
                    await rec.wait_done()
                if not rec.status.is_terminal:
                    raise TimeoutError(
                        f"Task {task_id!r} did not finish within {timeout:g}s (it is {rec.status.value}); "
                        "it keeps going: call result() again to keep waiting, or cancel() it"
                    )
        else:
            await trio.lowlevel.checkpoint()
        await self._registry.fetch(rec)
        return rec.outcome()

    async def cancel(self, task_id: str, *, grace: float | None = None) -> bool:
        """Cancel a task.

        A PENDING task is removed from the queue and recorded CANCELLED. A
        RUNNING task has its worker process killed (with every process its
        job started, by process group); once the worker is reaped the task is
        recorded CANCELLED, a fresh worker takes its slot, and only then does
        this return True. A task that already finished is left alone.

        With ``grace`` (seconds), a RUNNING job is first asked to stop: its
        worker gets SIGTERM, which raises
        :class:`~genro_tasks_worker.CancelRequested` inside the job (for an
        ``async def`` job, its trio scope is cancelled). If the job ends by
        raising, the task is CANCELLED; if it returns a value anyway, it is
        COMPLETED and this returns False; if it is still running when the
        grace period ends, its worker is killed as above.

        Returns:
            True if the task is now CANCELLED through this call (or a
            concurrent cancel); False if it had already finished otherwise.

        Raises:
            KeyError: ``Task not found: <id>``.
            ValueError: ``grace`` is not a non-negative finite number of seconds.
            RuntimeError: Called from outside the trio run that owns the manager.

        **Cancellation:** The kill is already under way when this starts
        waiting; cancelling the wait does not stop it, and the task still
        ends CANCELLED.
        """
        rec = await self._registry.lookup(task_id)
        self._check_owner("cancel")
        grace = check_seconds("grace", grace, task_id=task_id, allow_zero=True)
        scheduler = self._scheduler
        if scheduler is None or rec.status.is_terminal:
            await trio.lowlevel.checkpoint()
            return False
        if not self._registry.cancel_elsewhere(rec, grace):
            scheduler.cancel(rec, grace)
        await rec.wait_done()
        return rec.status is TaskStatus.CANCELLED

    async def flush(self) -> None:
        """Wait until every task submitted (and every change recorded) so far is durable.

        With a store, ``submit`` returns once the task is handed to the
        store's writer thread, which commits it in its next group commit (a
        few milliseconds later); after ``await tm.flush()`` everything
        submitted before the call is in the file and survives a crash of
        this process (with ``SQLiteStore(synchronous="FULL")``, a power
        loss too). Without a store there is nothing to wait for.

        Raises:
            RuntimeError: The store failed (the message says how).

        **Cancellation:** Only the wait is cancelled: the writes go ahead.
        """
        self._check_owner("flush")
        await self._registry.flush()

    async def _run(self, call: Call, options: TaskOptions) -> Any:
        rec = self._submit_record(call, options)
        try:
            await rec.wait_done()
        finally:
            if not rec.status.is_terminal and self._scheduler is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(_CANCEL_LIMIT):
                    if not self._registry.cancel_elsewhere(rec, None):
                        self._scheduler.cancel(rec)
                    await rec.wait_done()
        await self._registry.fetch(rec)
        return rec.outcome()

    # ---------------------------------------------------------- many tasks at once
    # map() is SubmitMethods', so that tm.options(...).map(...) works too.
    def as_completed(self, task_ids: Iterable[str]) -> AsCompleted:
        """Follow tasks and yield each one's terminal :class:`TaskInfo` as it finishes.

        ``async for info in tm.as_completed(ids): ...``; tasks already
        finished come first, then the others in the order they end. Each
        distinct task is yielded once (a task that retries is yielded when its
        last attempt ends). Leaving the loop early leaves the tasks running.

        Raises:
            KeyError: ``Task not found: <id>``, raised by this call.
            TypeError: ``task_ids`` is a single str instead of ids.
            RuntimeError: Called from outside the trio run that owns the manager.
        """
        records = self._records_of("as_completed", task_ids)
        return AsCompleted(records)

    async def gather(self, task_ids: Iterable[str], *, return_exceptions: bool = False) -> list[Any]:
        """Wait for every task and return their results in the order of ``task_ids``.

        Args:
            task_ids: Ids of submitted tasks (duplicates allowed).
            return_exceptions: Put what a task raised in its place in the list
                instead of raising it.

        Returns:
            Each task's value (as :meth:`result` returns it), in order.

        Raises:
            KeyError: ``Task not found: <id>``, before any waiting.
            Exception: Without ``return_exceptions``, what the first task to
                fail raised (as :meth:`result` raises it), as soon as it fails;
                the other tasks are left running.

        **Cancellation:** Only the wait is cancelled; the tasks keep going.
        """
        check_bool("gather(return_exceptions=...)", return_exceptions)
        records = self._records_of("gather", task_ids)
        ended = AllEnded(records, fail_fast=not return_exceptions)
        await ended.wait()
        if ended.failed is not None:
            await self._registry.fetch(ended.failed)
            ended.failed.outcome()  # raises
        results: list[Any] = []
        for rec in records:
            await self._registry.fetch(rec)  # a task run by another process sharing the store
            try:
                results.append(rec.outcome())
            except Exception as exc:
                if not return_exceptions:  # pragma: no cover - raised above
                    raise
                results.append(exc)
        return results

    def _records_of(self, call: str, task_ids: Iterable[str]) -> list[TaskRecord]:
        if isinstance(task_ids, str):
            raise TypeError(f"{call}() takes an iterable of task ids, not a single id {task_ids!r}: use [{task_ids!r}]")
        records = [self._registry.get(tid) for tid in task_ids]
        self._check_owner(call)
        return records

    @enable_ki_protection
    def group_info(self, group: str) -> GroupInfo:
        """Return a snapshot of a group: counts by status, aggregate progress, time left.

        A group is every task submitted with the ``group=`` option of that
        name (``tm.map`` makes its own). See :class:`GroupInfo`.

        Raises:
            KeyError: ``Group not found: <name>`` (no task was submitted
                with it, or it finished long ago and was forgotten).
            RuntimeError: Called from another thread while the manager runs.
        """
        self._check_owner("group_info")
        return self._registry.group_info(group)

    @enable_ki_protection
    def groups(self) -> list[GroupInfo]:
        """Return a snapshot of every known group, oldest first.

        The last 1000 groups whose tasks all finished are remembered (and
        ``clear_completed()`` forgets them).
        """
        self._check_owner("groups")
        return self._registry.groups()

    async def cancel_group(self, group: str) -> int:
        """Hard-cancel every queued and running task of ``group``; return how many became CANCELLED.

        Queued tasks (and tasks waiting to retry) are CANCELLED at once;
        running ones have their worker killed, as :meth:`cancel` does. It
        returns once each of them is terminal.

        Raises:
            KeyError: ``Group not found: <name>``.
            RuntimeError: Called from outside the trio run that owns the manager.

        **Cancellation:** The kills are under way when it starts waiting;
        cancelling the wait does not stop them.
        """
        records = self._registry.group_members(group)
        self._check_owner("cancel_group")
        records.sort(key=lambda rec: rec.started is not None)
        await self._cancel_records(records)
        return sum(1 for rec in records if rec.status is TaskStatus.CANCELLED)

    async def requeue(self, task_id: str) -> str:
        """Run a finished task again: its next attempt, under the same id.

        An operator's action (the API and dashboard offer it behind
        ``authorize``): the task, COMPLETED, FAILED or CANCELLED, becomes
        PENDING again with ``attempt`` one higher, its previous end kept in
        ``previous_errors``, and its automatic retries (if it has any) renewed.
        Its result is discarded; ``result()`` waits for the new attempt. The
        same pickled call is sent again.

        Returns:
            ``task_id``.

        Raises:
            KeyError: ``Task not found: <id>`` (unknown, or forgotten by retention).
            ValueError: The task is not finished (it is PENDING or RUNNING).
            ManagerClosed: The manager is not running.
            RuntimeError: Called from outside the trio run that owns the manager.

        **Cancellation:** Returns at once; the task is requeued either way.
        """
        rec = self._registry.get(task_id)
        self._check_owner("requeue")
        self._requeue(rec)
        await trio.lowlevel.checkpoint()
        return task_id

    @enable_ki_protection
    def _requeue(self, rec: TaskRecord) -> None:
        if not rec.status.is_terminal:
            raise ValueError(
                f"Task {rec.task_id!r} is {rec.status.value}, not finished: only a finished task can be "
                "requeued (cancel it first to run it again from the start)"
            )
        scheduler = self._scheduler
        if not self._running or scheduler is None or not scheduler.accepting:
            raise self._closed_error()
        self._registry.requeue(rec, scheduler)

    @enable_ki_protection
    def _kill_records(self, records: list[TaskRecord]) -> None:
        """Start cancelling ``records`` (queued ones first, so none takes a freed slot)."""
        scheduler = self._scheduler
        if scheduler is None or scheduler.finished.is_set():
            return
        registry = self._registry
        for rec in records:
            if not registry.cancel_elsewhere(rec, None):
                scheduler.cancel(rec)

    async def _cancel_records(self, records: list[TaskRecord]) -> None:
        """Cancel ``records`` and wait until each is terminal."""
        self._kill_records(records)
        for rec in records:
            await rec.wait_done()
        await trio.lowlevel.checkpoint()

    @enable_ki_protection
    def list_tasks(self, status: TaskStatus | str | None = None) -> list[TaskInfo]:
        """Return snapshots of all tracked tasks, oldest first, optionally of one status.

        Works from sync code outside trio too (for example after ``trio.run``
        returned); while the manager runs, call it from its trio thread.

        Args:
            status: A :class:`TaskStatus`, or its value in any case
                (``"running"``, ``"RUNNING"``), or None for every task.

        Raises:
            ValueError: ``status`` is not a status; the message lists the valid ones.
            RuntimeError: Called from another thread while the manager runs.
        """
        wanted = None if status is None else parse_status(status)
        self._check_owner("list_tasks")
        return self._registry.find(wanted)

    def _kept_records(self) -> list[TaskRecord]:
        """The kept task records, oldest first, live (the ASGI listing snapshots only the page it shows).

        ``list_tasks`` copies every task; a listing of 100,000 kept tasks that way
        held the event loop for about 0.4 s per request.
        """
        self._check_owner("list_tasks")
        return self._registry.records()

    @enable_ki_protection
    def clear_completed(self) -> int:
        """Forget every finished (COMPLETED, FAILED, CANCELLED) task; return how many.

        Raises:
            RuntimeError: Called from another thread while the manager runs
                (use ``trio.from_thread.run_sync(tm.clear_completed)``).
        """
        self._check_owner("clear_completed")
        return self._registry.clear_finished()

    @enable_ki_protection
    def statistics(self) -> TaskManagerStatistics:
        """Return a frozen snapshot of the manager's counters (trio's ``statistics()`` convention).

        Works from sync code outside trio too; while the manager runs, call it
        from its trio thread (RuntimeError otherwise).
        """
        self._check_owner("statistics")
        registry = self._registry
        registry.prune()
        scheduler = self._scheduler
        if scheduler is None:
            return TaskManagerStatistics(0, 0, 0, 0, 0, 0, 0, 0, len(registry), 0, 0, self._rejected)
        workers = scheduler.backend.statistics()
        return TaskManagerStatistics(
            workers_total=workers.workers_total,
            workers_idle=workers.workers_idle,
            workers_busy=workers.workers_busy,
            tasks_queued=scheduler.queued + registry.waiting(),
            tasks_running=scheduler.running,
            tasks_completed=registry.completed,
            tasks_failed=registry.failed,
            tasks_cancelled=registry.cancelled,
            tasks_tracked=len(registry),
            worker_restarts=workers.restarts,
            worker_crashes=workers.crashes,
            tasks_rejected=self._rejected,
        )

    def _check_owner(self, call: str) -> None:
        token = self._owner.token
        if token is None:
            return
        try:
            if trio.lowlevel.current_trio_token() is token:
                return  # the usual case, checked inline: it is on every submit's path
        except RuntimeError:
            pass
        scheduler = self._scheduler
        self._owner.refuse(f"TaskManager.{call}", stopped=scheduler is not None and scheduler.finished.is_set())

    @enable_ki_protection
    def watch(self, task_id: str) -> TaskWatcher:
        """Follow one task live: ``async for info in tm.watch(task_id): ...``.

        The iterator yields the current :class:`TaskInfo` at once, then a
        new snapshot for every change (status or progress), and ends after
        the terminal snapshot. A slow reader may skip intermediate progress
        values, never a status change or the final snapshot. Leaving the
        loop early releases everything.

        Raises:
            KeyError: ``Task not found: <id>`` (raised by this call).
        """
        rec = self._registry.get(task_id)
        self._check_owner("watch")
        return self._registry.hub.watch(rec)

    @enable_ki_protection
    def open_change_stream(self, *, max_pending: int = 10_000) -> ChangeStream:
        """Subscribe to every change of every task (for dashboards and logs).

        Use as ``async with tm.open_change_stream() as changes:`` and then
        ``async for info in changes:``. Each item is the *newest*
        :class:`TaskInfo` of a task that changed since you last read it, so
        a reader that stalls never blocks the scheduler, and buffers at
        most ``max_pending`` tasks (oldest dropped first, counted in
        ``changes.dropped``). Any number of streams may be open at once;
        the stream ends when the manager shuts down or when the ``async
        with`` block exits.
        """
        check_count("max_pending", max_pending, allow_none=False)
        self._check_owner("open_change_stream")
        return self._registry.hub.open_stream(max_pending)


def _refuse_process_options(backend: ExecutionBackend, **given: bool) -> None:
    """Raise ValueError naming the process pool options passed along with ``backend=``."""
    if not isinstance(backend, ExecutionBackend):
        raise TypeError(f"backend must be an execution backend such as genro_tasks.ray.RayBackend, not {backend!r}")
    names = [name for name, passed in given.items() if passed]
    if names:
        kind = type(backend).__name__
        raise ValueError(
            f"TaskManager(backend={kind}(...)) does not take {', '.join(names)}: "
            f"{'it is an option' if len(names) == 1 else 'they are options'} of the local process pool. "
            f"Configure the backend instead (e.g. {kind}(max_workers=...) for capacity), or drop backend= "
            "to run jobs in local worker processes"
        )


def _no_memory_limit(backend: ExecutionBackend) -> ValueError:
    kind = type(backend).__name__
    return ValueError(
        f"the memory_limit task option does not apply with backend={kind}(...): it caps a local worker "
        f"process's address space. Drop it; on Ray, reserve memory with {kind}(task_options={{'memory': ...}}) "
        "and let Ray's memory monitor stop a job that outgrows its node"
    )
