"""Run a TaskManager for exactly as long as an ASGI application lives."""

from __future__ import annotations

import math
import signal
import threading
from typing import Any

import trio

from .._manager import TaskManager
from ._http import ASGIApp, Message, Receive, Scope, Send

SCOPE_KEY = "genro_tasks"
METRICS_KEY = "genro_tasks.metrics"


class TaskManagerLifespan:
    """Wrap an ASGI app so that a TaskManager lives exactly as long as the app.

    On ``lifespan.startup`` the manager is started before the wrapped app sees
    the event; on shutdown it is shut down after the app has finished its own
    shutdown. Every ``http`` and ``websocket`` scope gets the manager as
    ``scope["genro_tasks"]``. Works whether or not the wrapped app handles
    lifespan events itself. If the wrapped app answers
    ``lifespan.startup.failed`` or raises on ``lifespan.shutdown``, the
    manager is shut down all the same.

    Shutdown is bounded by default, so it ends well within a server's own
    shutdown timeout: queued tasks are CANCELLED at once, running tasks get
    ``shutdown_timeout`` seconds to finish, and whatever still runs then is
    killed and recorded CANCELLED.

    In a process where nothing else handles SIGTERM (a server process of
    ``hypercorn --workers N``, whose main process handles the signals), a
    SIGTERM first runs that same bounded shutdown, then ends the process as
    it would have at once: hypercorn sends one to the processes still
    draining as soon as one has exited, and systemd to every process, so
    their running tasks finish instead of being lost.

    Args:
        app: The ASGI application to wrap.
        manager: The TaskManager to run (default: ``TaskManager()``).
        shutdown_wait: If False, running tasks are killed at once
            (``shutdown(wait=False)``).
        shutdown_cancel_pending: If False, queued tasks also run during the
            drain (still bounded by ``shutdown_timeout``).
        shutdown_timeout: Seconds to let tasks finish before they are
            killed (default 10), or None to wait however long they take.
        metrics: Keep Prometheus metrics of the manager (needs the
            ``metrics`` extra); :class:`TaskAPI` serves them at ``GET /metrics``.
        tracing: Emit one OpenTelemetry span per finished task to the global
            tracer provider (needs the ``otel`` extra; see
            :func:`genro_tasks.asgi.trace_metadata` to parent it on the submitter's trace).

    Raises:
        ValueError: ``shutdown_timeout`` is negative, NaN or infinite.
    """

    def __init__(
        self,
        app: ASGIApp,
        manager: TaskManager | None = None,
        *,
        shutdown_wait: bool = True,
        shutdown_cancel_pending: bool = True,
        shutdown_timeout: float | None = 10.0,
        metrics: bool = False,
        tracing: bool = False,
    ) -> None:
        if shutdown_timeout is not None and (
            isinstance(shutdown_timeout, bool)
            or not isinstance(shutdown_timeout, int | float)
            or not 0 <= shutdown_timeout < math.inf
        ):
            raise ValueError(
                f"shutdown_timeout must be a finite number of seconds >= 0, or None to wait for every task; "
                f"not {shutdown_timeout!r}"
            )
        self.app = app
        self._nursery: trio.Nursery | None = None
        # Set for each lifespan (see __call__): a shutdown begun, ended; the SIGTERM watch.
        self._shutting_down, self._shut_down = trio.Event(), trio.Event()
        self._sigterm_scope = trio.CancelScope()
        self.tasks = manager if manager is not None else TaskManager()
        self._wait = shutdown_wait
        self._cancel_pending = shutdown_cancel_pending
        #: Seconds tasks get to finish at shutdown before they are killed (None: no limit).
        self.shutdown_timeout = shutdown_timeout
        #: The Prometheus metrics (``metrics=True``), served by TaskAPI at ``GET /metrics``.
        self.metrics: Any = None
        if metrics:
            try:
                from ._metrics import TaskMetrics
            except ImportError as exc:
                raise ImportError(
                    "TaskManagerLifespan(metrics=True) needs prometheus_client: pip install 'genro-tasks[metrics]'"
                ) from exc
            self.metrics = TaskMetrics(self.tasks)
        #: The OpenTelemetry task tracer (``tracing=True``).
        self.tracer: Any = None
        if tracing:
            try:
                from ._tracing import TaskTracer
            except ImportError as exc:
                raise ImportError(
                    "TaskManagerLifespan(tracing=True) needs opentelemetry-api: pip install 'genro-tasks[otel]'"
                ) from exc
            self.tracer = TaskTracer(self.tasks)

    async def _shutdown(self) -> None:
        """Drain up to ``shutdown_timeout``, then kill what is left (shutdown's own cancel path).

        Called by the lifespan shutdown and by a SIGTERM, maybe both: the second waits for the first.
        """
        if self._shutting_down.is_set():
            await self._shut_down.wait()
            return
        self._shutting_down.set()
        try:
            limit = math.inf if self.shutdown_timeout is None else self.shutdown_timeout
            with trio.move_on_after(limit):
                await self.tasks.shutdown(wait=self._wait, cancel_pending=self._cancel_pending)
        finally:
            self._shut_down.set()
            self._sigterm_scope.cancel()  # a SIGTERM held meanwhile takes effect now

    async def _shutdown_on_sigterm(self) -> None:
        """Until the manager is shut down, a SIGTERM shuts it down (bounded) before it ends the process.

        The lifespan's end stops the watch (the signal's disposition is put back); a SIGTERM that
        arrived is delivered then, and ends the process. A drain it started is cancelled with the
        lifespan, like the lifespan's own: the manager's shutdown then kills what still runs.
        """
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            received = False
            with self._sigterm_scope:
                async for _ in signals:
                    received = True
                    break
            if received:
                try:
                    await self._shutdown()
                finally:
                    signal.raise_signal(signal.SIGTERM)  # held by the receiver: delivered as it closes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point.

        **Cancellation:** For a request, as the wrapped app. During lifespan,
        cancellation while the manager shuts down (or ``shutdown_timeout``
        running out) kills every worker first (see :meth:`TaskManager.shutdown`),
        also when a SIGTERM began that shutdown (the SIGTERM then ends the
        process). The lifespan's SIGTERM handling ends with it, however it ends.
        """
        if scope["type"] != "lifespan":
            scope[SCOPE_KEY] = self.tasks
            if self.metrics is not None:
                scope[METRICS_KEY] = self.metrics
            await self.app(scope, receive, send)
            return
        self._shutting_down, self._shut_down = trio.Event(), trio.Event()
        self._sigterm_scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._lifespan(scope, receive, send)
            finally:
                self._sigterm_scope.cancel()  # the lifespan is over, shut down or not

    async def _startup(self) -> None:
        await self.tasks.startup()
        if (
            self._nursery is not None
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):
            self._nursery.start_soon(self._shutdown_on_sigterm)
        for observer in (self.metrics, self.tracer):
            if observer is not None and self._nursery is not None:
                self._nursery.start_soon(observer.run)  # ends when the manager shuts down

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen: list[str] = []
        startup_error: list[BaseException] = []

        async def app_receive() -> Message:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "lifespan.startup":
                try:
                    await self._startup()
                except Exception as exc:
                    startup_error.append(exc)
            return message

        async def app_send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete" and startup_error:
                message = {"type": "lifespan.startup.failed", "message": f"TaskManager: {startup_error[0]}"}
            elif kind == "lifespan.shutdown.complete" or (kind == "lifespan.startup.failed" and self.tasks.is_running):
                await self._shutdown()  # a failed startup too: the server will not run, nothing may outlive it
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception:
            if seen and "lifespan.shutdown" in seen:
                await self._shutdown()  # the app's own shutdown failed: the manager's still runs
            if seen:
                raise
        if seen:
            return
        # The wrapped app does not do lifespan: answer the events ourselves.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": f"TaskManager: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def task_manager(scope: Scope) -> TaskManager:
    """Return the TaskManager that :class:`TaskManagerLifespan` put in ``scope``.

    Raises:
        LookupError: The app is not wrapped in TaskManagerLifespan.
    """
    try:
        manager = scope[SCOPE_KEY]
    except KeyError:
        raise LookupError(
            "no TaskManager in this scope: wrap the app in genro_tasks.asgi.TaskManagerLifespan"
        ) from None
    if not isinstance(manager, TaskManager):
        raise LookupError(f"scope[{SCOPE_KEY!r}] is not a TaskManager")
    return manager
