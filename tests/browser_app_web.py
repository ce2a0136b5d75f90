"""The ASGI app the live-view browser tests drive (tests/test_dashboard_live.py):
the dashboard under /tasks/, and routes that set scenes server-side.

Environment: GENRO_WEB_WORKERS (default 2), GENRO_WEB_MAX_STREAMS (default 64).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from genro_tasks import TaskManager, TaskStatus
from genro_tasks.asgi import Receive, Scope, Send, TaskAPI, TaskManagerLifespan, task_manager
from jobs import failing_task, progress_steps, simple_task, slow_task

JOBS: dict[str, Callable[..., Any]] = {
    "slow": slow_task,
    "progress": progress_steps,
    "simple": simple_task,
    "fail": failing_task,
}


def allow(scope: Scope, action: str, task_id: str | None) -> bool:
    return True


api = TaskAPI(authorize=allow, max_streams=int(os.environ.get("GENRO_WEB_MAX_STREAMS", "64")), expose_tracebacks=True)


async def routes(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path.startswith("/tasks/"):
        await api({**scope, "root_path": "/tasks"}, receive, send)
        return
    tm = task_manager(scope)
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    body = b""
    if path == "/submit":  # ?job=slow&args=60&id=x[&n=3: ids x-0..x-2]
        func = JOBS[query["job"]]
        args = [float(a) if "." in a else int(a) for a in query.get("args", "").split(",") if a]
        count = int(query.get("n", "0"))
        if count:
            for i in range(count):
                tm.submit(func, *args, task_id=f"{query['id']}-{i}", metadata={"batch": query["id"], "i": i})
        else:
            tm.submit(func, *args, task_id=query.get("id"), metadata={"owner": "ops", "job": query["job"]})
    elif path == "/cancel":
        await tm.cancel(query["id"])
    elif path == "/wait":  # until the task has the status
        async for info in tm.watch(query["id"]):
            if info.status is TaskStatus(query["status"]):
                break
    elif path == "/stats":
        body = repr(tm.statistics()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


app = TaskManagerLifespan(
    routes, TaskManager(max_workers=int(os.environ.get("GENRO_WEB_WORKERS", "2"))), shutdown_wait=False
)
