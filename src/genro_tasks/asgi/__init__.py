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
streams), ``_serialize`` (a task's JSON form), ``_dashboard`` (the page),
``_http`` (ASGI plumbing).
"""

from ._api import Authorize, TaskAPI
from ._http import ASGIApp, Message, Receive, Scope, Send
from ._lifespan import SCOPE_KEY, TaskManagerLifespan, task_manager
from ._serialize import info_to_json

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
