"""Run a TaskManager for exactly as long as an ASGI application lives."""

from __future__ import annotations

from .._manager import TaskManager
from ._http import ASGIApp, Message, Receive, Scope, Send

SCOPE_KEY = "genro_tasks"


class TaskManagerLifespan:
    """Wrap an ASGI app so that a TaskManager lives exactly as long as the app.

    On ``lifespan.startup`` the manager is started before the wrapped app sees
    the event; on shutdown it is shut down (``wait`` and ``cancel_pending`` as
    given) after the app has finished its own shutdown. Every ``http`` and
    ``websocket`` scope gets the manager as ``scope["genro_tasks"]``. Works
    whether or not the wrapped app handles lifespan events itself.

    Args:
        app: The ASGI application to wrap.
        manager: The TaskManager to run (default: ``TaskManager()``).
        shutdown_wait: Passed to ``shutdown(wait=...)``.
        shutdown_cancel_pending: Passed to ``shutdown(cancel_pending=...)``.
    """

    def __init__(
        self,
        app: ASGIApp,
        manager: TaskManager | None = None,
        *,
        shutdown_wait: bool = True,
        shutdown_cancel_pending: bool = False,
    ) -> None:
        self.app = app
        self.tasks = manager if manager is not None else TaskManager()
        self._wait = shutdown_wait
        self._cancel_pending = shutdown_cancel_pending

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point.

        **Cancellation:** For a request, as the wrapped app. During lifespan,
        cancellation while the manager shuts down kills every worker first
        (see :meth:`TaskManager.shutdown`).
        """
        if scope["type"] != "lifespan":
            scope[SCOPE_KEY] = self.tasks
            await self.app(scope, receive, send)
            return
        await self._lifespan(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen: list[str] = []
        startup_error: list[BaseException] = []

        async def app_receive() -> Message:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "lifespan.startup":
                try:
                    await self.tasks.startup()
                except Exception as exc:
                    startup_error.append(exc)
            return message

        async def app_send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete" and startup_error:
                message = {"type": "lifespan.startup.failed", "message": f"TaskManager: {startup_error[0]}"}
            elif kind == "lifespan.shutdown.complete":
                await self.tasks.shutdown(wait=self._wait, cancel_pending=self._cancel_pending)
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception:
            if seen:
                raise
        if seen:
            return
        # The wrapped app does not do lifespan: answer the events ourselves.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.tasks.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": f"TaskManager: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.tasks.shutdown(wait=self._wait, cancel_pending=self._cancel_pending)
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
