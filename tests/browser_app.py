"""The ASGI app the browser tests drive: a TaskManager with one worker, the
dashboard mounted under /tasks/, and routes that set the scene."""

from __future__ import annotations

from genro_tasks import TaskManager
from genro_tasks.asgi import Receive, Scope, Send, TaskAPI, TaskManagerLifespan, task_manager
from jobs import hostile_progress, progress_steps, simple_task, slow_task

HOSTILE = '<img src=x onerror="window.pwned=1">'
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
    tm = task_manager(scope)
    if path == "/setup":
        tm.submit(slow_task, 60, task_id="blocker")
        tm.submit(progress_steps, 400, 0.05, task_id="target", metadata={"owner": "<b>bold</b>"})
        tm.submit(hostile_progress, HOSTILE, 60, task_id="hostile")
    elif path == "/setup-group":
        nightly = tm.options(group="nightly")
        nightly.submit(simple_task, 1, task_id="n-quick")
        nightly.submit(slow_task, 60, task_id="n-slow")
        nightly.submit(slow_task, 60, task_id="n-queued")
        tm.submit(simple_task, 2, task_id="loose")
    elif path == "/setup-dot-group":
        dots = tm.options(group=DOT_GROUP)
        dots.submit(slow_task, 60, task_id="dot-running")
        dots.submit(slow_task, 60, task_id="dot-queued")
    elif path == "/release":
        await tm.cancel("blocker")
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


app = TaskManagerLifespan(routes, TaskManager(max_workers=1), shutdown_wait=False)
