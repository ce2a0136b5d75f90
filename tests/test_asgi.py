"""ASGI integration against a real hypercorn (trio worker) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from conftest import wait_status
from genro_tasks import TaskManager, TaskStatus, testing
from genro_tasks.asgi import Receive, Scope, Send, TaskAPI, TaskManagerLifespan, task_manager
from jobs import failing_task, hostile_progress, progress_steps, return_bytes, simple_task, slow_task

ROOT = Path(__file__).parent.parent


def allow_all(scope: Scope, action: str, task_id: str | None) -> bool:
    return True


async def deny_all(scope: Scope, action: str, task_id: str | None) -> bool:
    return False


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with hypercorn on a free 127.0.0.1 port; yield the base URL."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 1.0
    config.accesslog = None
    stop = trio.Event()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
            try:
                yield binds[0]
            finally:
                stop.set()


def api_app(tm: TaskManager, **api_options: Any) -> TaskManagerLifespan:
    api = TaskAPI(**api_options)

    async def routes(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api"):
            await api({**scope, "root_path": "/api"}, receive, send)
        elif scope["type"] == "http":
            # An application handler reaching the manager through the scope.
            manager = task_manager(scope)
            tid = manager.submit(simple_task, 20, task_id="from-handler")
            body = json.dumps({"task_id": tid, "same": manager is tm}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})

    return TaskManagerLifespan(routes, tm, shutdown_wait=False)


async def test_lifespan_starts_and_stops_the_manager() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm)) as url:
        assert tm.is_running
        async with httpx.AsyncClient(base_url=url) as client:
            reply = (await client.get("/start")).json()
        assert reply == {"task_id": "from-handler", "same": True}
        with trio.fail_after(20):
            assert await tm.result("from-handler") == 40
    stopped: bool = not tm.is_running
    assert stopped
    assert not testing.worker_pids(tm)


async def test_lifespan_composes_with_an_app_that_handles_lifespan() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                seen.append(message["type"])
                if message["type"] == "lifespan.startup":
                    seen.append(f"manager running: {task_manager_running()}")
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    tm = TaskManager(1)

    def task_manager_running() -> bool:
        return tm.is_running

    async with running(TaskManagerLifespan(app, tm)):
        assert tm.is_running
    assert seen == ["lifespan.startup", "manager running: True", "lifespan.shutdown"]
    assert not tm.is_running


async def test_lifespan_startup_failure_is_reported() -> None:
    from jobs import init_always_fails

    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message)

    async def no_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("this app does not do lifespan")

    wrapper = TaskManagerLifespan(no_lifespan, TaskManager(1, initializer=init_always_fails))
    with trio.fail_after(30):
        await wrapper({"type": "lifespan"}, receive, send)
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "database unreachable" in sent[0]["message"]


async def test_list_info_pagination_and_filters() -> None:
    tm = TaskManager(2)
    async with running(api_app(tm)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        ids = [tm.submit(simple_task, i, task_id=f"t-{i}", metadata={"n": i}) for i in range(7)]
        with trio.fail_after(20):
            for tid in ids:
                await tm.result(tid)
        failed = tm.submit(failing_task, task_id="bad")
        with trio.fail_after(20), pytest.raises(ValueError, match="intentionally"):
            await tm.result(failed)
        page = (await client.get("/tasks", params={"limit": 3, "offset": 2})).json()
        assert page["total"] == 8
        assert [t["task_id"] for t in page["tasks"]] == ["t-2", "t-3", "t-4"]
        only_failed = (await client.get("/tasks", params={"status": "failed"})).json()
        assert [t["task_id"] for t in only_failed["tasks"]] == ["bad"]
        info = (await client.get("/tasks/t-3")).json()
        assert info["status"] == "completed"
        assert info["metadata"] == {"n": 3}
        assert info["name"] == "jobs.simple_task"
        assert (await client.get("/tasks", params={"status": "bogus"})).status_code == 400
        assert (await client.get("/tasks", params={"limit": 100000})).status_code == 400
        assert (await client.get("/tasks/nope")).status_code == 404


async def test_listing_many_tasks_snapshots_only_the_page() -> None:
    # A dashboard polls GET /tasks: with many kept tasks, copying every one of them per request
    # held the event loop for as long as list_tasks() takes. The listing costs a fraction of that now.
    count = 20_000
    tm = TaskManager(2, max_finished=count)
    async with running(api_app(tm)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        with trio.fail_after(120):
            await tm.gather([tm.submit(simple_task, i) for i in range(count)])
        copy_all, listing = [], []
        for _ in range(3):
            start = time.perf_counter()
            assert len(tm.list_tasks()) == count
            copy_all.append(time.perf_counter() - start)
            start = time.perf_counter()
            page = (await client.get("/tasks", params={"status": "completed", "sort": "-created_at"})).json()
            listing.append(time.perf_counter() - start)
            assert page["total"] == count
            assert page["counts"]["completed"] == count
            assert len(page["tasks"]) == 50
        assert min(listing) < min(copy_all) / 2, (listing, copy_all)


@pytest.mark.parametrize("bad_id", ["a%20b", "%3Cscript%3E", "a" * 200, "x%00y", "-lead"])
async def test_ids_are_validated(bad_id: str) -> None:
    tm = TaskManager(1)
    async with running(api_app(tm, authorize=allow_all)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        reply = await client.get(f"/tasks/{bad_id}")
        assert reply.status_code in (400, 404)
        if reply.status_code == 400:
            assert "invalid task id" in reply.json()["error"]
        cancel = await client.post(f"/tasks/{bad_id}/cancel", headers={"X-Genro-Tasks": "1"})
        assert cancel.status_code in (400, 404)


async def test_cancel_needs_authorize_hook_and_csrf_header() -> None:
    cases: list[tuple[dict[str, Any], bool, str]] = [
        ({}, True, "did not configure"),
        ({"authorize": deny_all}, True, "not authorised"),
        ({"authorize": allow_all}, False, "X-Genro-Tasks"),
    ]
    for options, header, expected in cases:
        tm = TaskManager(1)
        async with running(api_app(tm, **options)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
            tid = tm.submit(slow_task, 60)
            await wait_status(tm, tid, TaskStatus.RUNNING)
            headers = {"X-Genro-Tasks": "1"} if header else {}
            reply = await client.post(f"/tasks/{tid}/cancel", headers=headers)
            assert reply.status_code == 403
            assert expected in reply.json()["error"]
            assert testing.status(tm, tid) is TaskStatus.RUNNING
            config = (await client.get("/config")).json()
            assert config["can_cancel"] is (options.get("authorize") is allow_all)


async def test_authorised_cancel() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm, authorize=allow_all)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        tid = tm.submit(slow_task, 60)
        await wait_status(tm, tid, TaskStatus.RUNNING)
        reply = await client.post(f"/tasks/{tid}/cancel", headers={"X-Genro-Tasks": "1"})
        assert reply.status_code == 200
        assert reply.json()["cancelled"] is True
        assert reply.json()["task"]["status"] == "cancelled"
        again = await client.post(f"/tasks/{tid}/cancel", headers={"X-Genro-Tasks": "1"})
        assert again.json()["cancelled"] is False
        assert (await client.get(f"/tasks/{tid}/cancel")).status_code == 405


async def test_result_endpoint() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        ok = tm.submit(simple_task, 4, task_id="ok")
        raw = tm.submit(return_bytes, task_id="raw")
        bad = tm.submit(failing_task, task_id="bad")
        with trio.fail_after(20):
            await tm.result(ok)
            await tm.result(raw)
            with pytest.raises(ValueError, match="intentionally"):
                await tm.result(bad)
        slow = tm.submit(slow_task, 60, task_id="slow")
        assert (await client.get("/tasks/ok/result")).json() == {"task_id": "ok", "result": 8}
        reply = await client.get("/tasks/raw/result")
        assert reply.status_code == 409
        assert "not JSON-serialisable" in reply.json()["error"]
        reply = await client.get("/tasks/bad/result")
        assert reply.status_code == 409
        assert reply.json()["task"]["error"] == "ValueError: Task failed intentionally"
        assert (await client.get(f"/tasks/{slow}/result")).status_code == 409


async def test_tracebacks_only_when_opted_in() -> None:
    from jobs import raise_unpicklable

    for expose in (False, True):
        tm = TaskManager(1)
        async with running(api_app(tm, expose_tracebacks=expose)) as url:
            tid = tm.submit(raise_unpicklable)
            with trio.fail_after(20), pytest.raises(Exception, match="cannot cross"):
                await tm.result(tid)
            async with httpx.AsyncClient(base_url=url + "/api") as client:
                info = (await client.get(f"/tasks/{tid}")).json()
                listed = (await client.get("/tasks")).json()["tasks"][0]
        assert info["error"] == "jobs.UnpicklableError: this exception cannot cross processes"
        assert ("traceback" in info) is expose
        assert ("traceback" in listed) is expose
        if expose:
            assert "raise_unpicklable" in info["traceback"]
        assert "Traceback (most recent call last)" not in json.dumps(info) or expose


async def test_no_endpoint_accepts_code() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm, authorize=allow_all)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        for path in ("/tasks", "/tasks/x", "/events", "/"):
            reply = await client.post(path, json={"func": "os.system", "args": ["true"]})
            assert reply.status_code == 405
        assert tm.list_tasks() == []


async def sse_events(url: str, path: str, stop: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Read Server-Sent Events from ``url + path`` until ``stop(event)`` or the end event.

    A minimal HTTP/1.0 client over a trio socket, so leaving early is clean.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    events: list[dict[str, Any]] = []
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        buffer = b""
        head_done = False
        kind = ""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return events
            buffer += chunk
            if not head_done:
                if b"\r\n\r\n" not in buffer:
                    continue
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                assert b" 200 " in head.split(b"\r\n")[0], head
                assert b"text/event-stream" in head
                head_done = True
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode()
                if text.startswith("event: "):
                    kind = text[7:]
                elif text.startswith("data: ") and kind == "end":
                    return events
                elif text.startswith("data: ") and kind == "task":
                    events.append(json.loads(text[6:]))
                    if stop(events[-1]):
                        return events


async def test_sse_one_task() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm)) as url:
        tid = tm.submit(progress_steps, 5, 0.05)
        with trio.fail_after(30):
            events = await sse_events(url, f"/api/tasks/{tid}/events", lambda e: False)
        statuses = [e["status"] for e in events]
        assert statuses[-1] == "completed"
        assert "running" in statuses
        progress = [e["progress"] for e in events if e["progress"] is not None]
        assert progress == sorted(progress)
        assert progress[-1] == 1.0


async def test_sse_all_tasks() -> None:
    tm = TaskManager(2)
    async with running(api_app(tm)) as url:
        done: set[str] = set()
        ids: set[str] = set()

        def all_done(event: dict[str, Any]) -> bool:
            if event["status"] == "completed":
                done.add(event["task_id"])
            return bool(ids) and done >= ids

        async def submit_later() -> None:
            # Wait until the SSE handler has subscribed (nothing to await on from here).
            await testing.wait_until(tm, lambda: testing.stream_count(tm) > 0)
            ids.update(tm.submit(simple_task, i) for i in range(5))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit_later)
                await sse_events(url, "/api/events", all_done)
        assert done == ids


async def test_dashboard_page_is_self_contained_and_escapes() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        tm.submit(hostile_progress, "<img src=x onerror=alert(1)>", 0.0, task_id="evil", metadata={"x": "</script>"})
        reply = await client.get("/")
        page = reply.text
        assert reply.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in reply.headers["content-security-policy"]
        assert "http://" not in page  # nothing fetched from elsewhere
        assert "https://" not in page
        assert "innerHTML" not in page  # user data only ever goes through textContent
        assert "<img src=x" not in page  # no user data rendered server-side
        info = (await client.get("/tasks/evil")).json()
        assert info["metadata"] == {"x": "</script>"}


@asynccontextmanager
async def example_server(env: dict[str, str], workers: int = 1) -> AsyncIterator[str]:
    """The README's command, ``hypercorn --worker-class trio [--workers N] examples.export_app:app``,
    on a free 127.0.0.1 port with ``env`` added to the environment; yield its base URL."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "hypercorn", "--worker-class", "trio", "--workers", str(workers)]
    command += ["--bind", f"127.0.0.1:{port}", "examples.export_app:app"]
    proc = await trio.lowlevel.open_process(
        command, cwd=ROOT, env={**os.environ, **env}, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert proc.stderr is not None
        log = b""
        with trio.fail_after(60):
            while log.count(b"Running on") < workers:  # each server process says so once it listens
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, log.decode()
                log += chunk
        yield f"http://127.0.0.1:{port}"
    finally:
        with trio.CancelScope(shield=True):
            proc.terminate()
            with trio.move_on_after(30) as waited:
                await proc.wait()
            if waited.cancelled_caught:
                proc.kill()
                await proc.wait()
            if proc.stderr is not None:
                await proc.stderr.aclose()


async def test_example_app_with_hypercorn_cli(tmp_path: Path) -> None:
    """The README's command: hypercorn --worker-class trio examples.export_app:app."""
    env = {"EXPORT_REPORT_DIR": str(tmp_path)}  # its reports and task store: this test's own
    async with example_server(env) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        started = await client.post(
            "/exports", params={"user_id": 42, "seconds": 0.5}, headers={"X-Requested-With": "exports"}
        )
        assert started.status_code == 202
        task_id = started.json()["task_id"]
        with trio.fail_after(60):
            events = await sse_events(url, f"/tasks/tasks/{task_id}/events", lambda e: False)
        seen = [e["status"] for e in events]
        assert seen[-1] == "completed"
        status = (await client.get(f"/exports/{task_id}")).json()
        assert status["progress"] == 1.0
        report = Path(status["report_path"])
        assert report.read_text().startswith("row,user,amount")
        report.unlink()
        assert (await client.get("/tasks/")).status_code == 200


async def test_reads_can_require_authorisation() -> None:
    def only_cancel(scope: Scope, action: str, task_id: str | None) -> bool:
        return action == "cancel"

    tm = TaskManager(1)
    app = api_app(tm, authorize=only_cancel, authorize_reads=True)
    async with running(app) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        tid = tm.submit(slow_task, 60)
        await wait_status(tm, tid, TaskStatus.RUNNING)
        for path in ("/tasks", f"/tasks/{tid}", f"/tasks/{tid}/result", "/config"):
            reply = await client.get(path)
            assert reply.status_code == 403, path
        assert (await client.get("/")).status_code == 200  # the page itself holds no data
        reply = await client.post(f"/tasks/{tid}/cancel", headers={"X-Genro-Tasks": "1"})
        assert reply.json()["cancelled"] is True


async def test_event_streams_are_capped() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm, max_streams=1)) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        first = await trio.open_tcp_stream(host, int(port))
        async with first:
            await first.send_all(f"GET /api/events HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            head = b""
            with trio.fail_after(20):
                while b"\r\n\r\n" not in head:
                    head += await first.receive_some(4096)
            assert b" 200 " in head
            async with httpx.AsyncClient(base_url=url + "/api") as client:
                reply = await client.get("/events")
            assert reply.status_code == 503
            assert "max_streams=1" in reply.json()["error"]
