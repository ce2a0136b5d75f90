"""The seed's usage example done right: a trio ASGI app whose handlers start a
progress-reporting export job and report its status, plus the built-in task
dashboard and API mounted under /tasks/.

Run from the repository root:

    hypercorn --worker-class trio --bind 127.0.0.1:8000 examples.export_app:app

then open http://127.0.0.1:8000/ (start exports) and http://127.0.0.1:8000/tasks/ (dashboard).

Its tasks live in a shared store (an SQLite file: ``$EXPORT_TASK_STORE``, else
``tasks.db`` beside the reports), so it can run as several server processes,
and a restart forgets nothing:

    EXPORT_TASK_STORE=var/tasks.db hypercorn --worker-class trio --workers 4 \
        --bind 127.0.0.1:8000 examples.export_app:app

Every process sees every export, any idle worker of any process runs the next
one, and a cancel from any process kills the job wherever it runs. Each JSON
answer names the server process that gave it (``X-Served-By``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import trio

from genro_tasks import QueueFull, TaskManager
from genro_tasks.asgi import Receive, Scope, Send, TaskAPI, TaskManagerLifespan, info_to_json, task_manager

from .export_jobs import clean_stale_parts, generate_report, report_dir

#: Requests that start work must carry this header. A cross-site HTML form cannot
#: set custom headers (and a cross-site fetch that sets one needs a CORS preflight
#: this app never grants), so a hostile page cannot start exports in a user's name.
CSRF_HEADER = (b"x-requested-with", b"exports")
MAX_SECONDS = 60.0
#: The largest user id: its report's file name stays short (an unbounded one failed the export).
MAX_USER_ID = 10**18 - 1


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
  const r = await fetch("exports?user_id=" + Math.floor(Math.random() * 1000),
                        {method: "POST", headers: {"X-Requested-With": "exports"}});
  document.getElementById("out").textContent = JSON.stringify(await r.json(), null, 2);
};
</script>
"""


async def send_json(send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    start = [(b"content-type", b"application/json"), (b"x-served-by", str(os.getpid()).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


async def start_export(scope: Scope, send: Send) -> None:
    """POST /exports?user_id=N[&seconds=S]: submit the export, answer with its id at once.

    403 without the ``X-Requested-With: exports`` header, 422 for a bad
    ``user_id`` (an integer in [0, 10**18)) or ``seconds`` (a finite number
    in (0, 60]) or a parameter given twice, 429 when the queue is full
    (``max_queued``), with ``Retry-After``.
    """
    if CSRF_HEADER not in scope.get("headers", []):
        await send_json(send, 403, {"error": "missing header 'X-Requested-With: exports' (cross-site protection)"})
        return
    parsed = parse_qs(scope["query_string"].decode("latin-1"))
    repeated = [name for name, values in parsed.items() if len(values) > 1]
    if repeated:
        await send_json(send, 422, {"error": f"parameter {repeated[0]!r} is given more than once: give it once"})
        return
    query = {k: v[0] for k, v in parsed.items()}
    try:
        user_id = int(query.get("user_id", ""))
    except ValueError:
        user_id = -1
    if not 0 <= user_id <= MAX_USER_ID:
        await send_json(send, 422, {"error": f"user_id must be an integer between 0 and {MAX_USER_ID}"})
        return
    try:
        seconds = float(query.get("seconds", "6"))
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
        error = f"seconds must be a number in (0, {MAX_SECONDS:g}], not {query['seconds']!r}"
        await send_json(send, 422, {"error": error})
        return
    tm = task_manager(scope)
    try:
        task_id = tm.submit(
            generate_report,
            user_id,
            seconds=seconds,
            directory=str(report_dir()),
            metadata={"type": "export", "user": user_id},
        )
    except QueueFull:
        await send_json(send, 429, {"error": "too many exports waiting; retry later"}, [(b"retry-after", b"10")])
        return
    # Durable before we answer: the next request may reach another server process (or a
    # restarted one), which then finds the export in the store.
    await tm.flush()
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
        try:
            body["report_path"] = await tm.result(task_id)
        except KeyError:  # cleared (retention, or another process) between info() and result()
            await send_json(send, 404, {"error": f"no export {task_id!r}"})
            return
    await send_json(send, 200, body)


async def routes(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
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


async def lifespan(receive: Receive, send: Send) -> None:
    """Startup removes partial reports that hard-killed exports left behind."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await trio.to_thread.run_sync(clean_stale_parts, report_dir())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def default_store() -> Path:
    """Where the app keeps its tasks: ``$EXPORT_TASK_STORE``, else ``tasks.db`` beside the reports."""
    return Path(os.environ.get("EXPORT_TASK_STORE") or report_dir() / "tasks.db")


def make_app(
    max_workers: int = 2, max_queued: int = 20, store: str | os.PathLike[str] | None = None
) -> TaskManagerLifespan:
    """The app with its own TaskManager on the shared store (queue bounded: beyond ``max_queued``, 429).

    Every server process opens a TaskManager on the same store (``store``, else
    :func:`default_store`): they share one queue and one view of every task.
    """
    path = Path(store) if store is not None else default_store()
    path.parent.mkdir(parents=True, exist_ok=True)
    return TaskManagerLifespan(routes, TaskManager(max_workers=max_workers, max_queued=max_queued, store=path))


app = make_app()
