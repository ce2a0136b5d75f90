"""ASGI integration: run a TaskManager for an application's lifespan, and serve
a JSON/SSE API and a live dashboard over it.

No web framework is needed (these are plain ASGI callables), and none is
imported. Serve with hypercorn's trio worker::

    hypercorn --worker-class trio myapp:app

* :class:`TaskManagerLifespan` wraps any ASGI app: the manager starts on
  ``lifespan.startup`` and shuts down on ``lifespan.shutdown``; request
  handlers reach it as ``scope["genro_tasks"]`` (or the wrapper's ``.tasks``).
* :class:`TaskAPI` is a mountable ASGI app over a manager: list, info,
  cancel (POST, behind an ``authorize`` hook), result, Server-Sent Events for
  one task or all tasks, and the dashboard page. It never lets a remote
  caller choose code to run: submission stays in your own handlers.

Modules: ``_lifespan`` (the wrapper), ``_api`` (routes), ``_events`` (event
streams), ``_listing`` (server-side paging, search and sort), ``_serialize``
(a task's JSON form), ``_dashboard`` (the page, its script, the status
palette), ``_http`` (ASGI plumbing); optional: ``_metrics`` (Prometheus,
``TaskMetrics``) and ``_tracing`` (OpenTelemetry, ``TaskTracer``,
``trace_metadata``), loaded on first use.
"""

from typing import Any

from ._api import Authorize, TaskAPI
from ._http import ASGIApp, Message, Receive, Scope, Send
from ._lifespan import SCOPE_KEY, TaskManagerLifespan, task_manager
from ._serialize import info_to_json


def __getattr__(name: str) -> Any:
    # The optional extras load only when asked for.
    if name in ("TaskMetrics",):
        from ._metrics import TaskMetrics

        return TaskMetrics
    if name in ("TaskTracer", "trace_metadata"):
        from . import _tracing

        return getattr(_tracing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = (
    "SCOPE_KEY",
    "ASGIApp",
    "Authorize",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "TaskAPI",
    "TaskManagerLifespan",
    "info_to_json",
    "task_manager",
)
