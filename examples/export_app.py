"""The seed's usage example done right: a trio ASGI app whose handlers start a
progress-reporting export job and report its status, plus the built-in task
dashboard and API mounted under /tasks/.

Run from the repository root:

    hypercorn --worker-class trio --bind 127.0.0.1:8000 examples.export_app:app

then open http://127.0.0.1:8000/ (start exports) and http://127.0.0.1:8000/tasks/ (dashboard).
"""

from __future__ import annotations

import json
from typing import Any

from genro_tasks import TaskManager
from genro_tasks.asgi import Receive, Scope, Send, TaskAPI, TaskManagerLifespan, info_to_json, task_manager

from .export_jobs import generate_report


def local_operator(scope: Scope, action: str, task_id: str | None) -> bool:
    """Demo policy: only requests from this machine may cancel. Use real auth in production."""
    client = scope.get("client") or ("", 0)
    return action == "cancel" and client[0] in ("127.0.0.1", "::1")


tasks_api = TaskAPI(authorize=local_operator)

INDEX = b"""<!doctype html><meta charset="utf-8"><title>exports</title>
<h1>Exports</h1>
<p><button id="go">Start an export</button> <a href="tasks/">open the task dashboard</a></p>
<pre id="out"></pre>
<script>
document.getElementById("go").onclick = async () => {
  const r = await fetch("exports?user_id=" + Math.floor(Math.random() * 1000), {method: "POST"});
  document.getElementById("out").textContent = JSON.stringify(await r.json(), null, 2);
};
</script>
"""


async def send_json(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def start_export(scope: Scope, send: Send) -> None:
    """POST /exports?user_id=N: submit the long-running export, answer with its id at once."""
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    try:
        user_id = int(query.get("user_id", ""))
    except ValueError:
        await send_json(send, 400, {"error": "user_id must be an integer"})
        return
    try:
        seconds = min(max(float(query.get("seconds", "6")), 0.1), 60.0)
    except ValueError:
        seconds = 6.0
    tm = task_manager(scope)
    task_id = tm.submit(generate_report, user_id, seconds=seconds, metadata={"type": "export", "user": user_id})
    await send_json(send, 202, {"task_id": task_id, "status_url": f"exports/{task_id}"})


async def check_export(scope: Scope, send: Send, task_id: str) -> None:
    """GET /exports/{task_id}: the export's status, progress and, when done, the file."""
    tm = task_manager(scope)
    try:
        info = await tm.info(task_id)
    except KeyError:
        await send_json(send, 404, {"error": f"no export {task_id!r}"})
        return
    body = info_to_json(info)
    if info.status.value == "completed":
        body["report_path"] = await tm.result(task_id)
    await send_json(send, 200, body)


async def routes(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if path.startswith("/tasks"):
        if path == "/tasks":
            await send({"type": "http.response.start", "status": 308, "headers": [(b"location", b"/tasks/")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await tasks_api({**scope, "root_path": scope.get("root_path", "") + "/tasks"}, receive, send)
    elif path == "/" and method == "GET":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": INDEX})
    elif path == "/exports" and method == "POST":
        await start_export(scope, send)
    elif path.startswith("/exports/") and method == "GET":
        await check_export(scope, send, path.removeprefix("/exports/"))
    else:
        await send_json(send, 404, {"error": "not found"})


app = TaskManagerLifespan(routes, TaskManager(max_workers=2))
