"""The ASGI app the dashboard attack test drives: one worker, the dashboard under
/tasks/, and a route that queues a group whose name a browser would resolve as a
path segment (``..``)."""

from __future__ import annotations

from genro_tasks import TaskManager
from genro_tasks.asgi import Receive, Scope, Send, TaskAPI, TaskManagerLifespan, task_manager
from jobs import slow_task

#: A legal group name that a browser resolves when it is a path segment, even percent-encoded.
DOT_GROUP = ".."


def allow(scope: Scope, action: str, task_id: str | None) -> bool:
    return True


api = TaskAPI(authorize=allow)


async def routes(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path.startswith("/tasks/"):
        await api({**scope, "root_path": "/tasks"}, receive, send)
        return
    if path == "/setup-dot-group":
        dots = task_manager(scope).options(group=DOT_GROUP)
        dots.submit(slow_task, 60, task_id="dot-running")
        dots.submit(slow_task, 60, task_id="dot-queued")
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


app = TaskManagerLifespan(routes, TaskManager(max_workers=1), shutdown_wait=False)
