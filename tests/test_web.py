"""The web layer's promises (issue 14) against a real hypercorn on 127.0.0.1:
defensive serialisation, addressable ids, 405/HEAD, bounded lifespan
shutdown, and event streams that never lose a final state."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from conftest import wait_status
from genro_tasks import MemoryLimitExceeded, QueueFull, TaskManager, TaskStatus, TaskTimeout, WorkerCrashed
from genro_tasks.asgi import Receive, Scope, Send, TaskAPI, TaskManagerLifespan
from jobs import simple_task, slow_task
from test_asgi import allow_all, api_app, deny_all, running


class RaisingRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def deep(levels: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return root


async def test_odd_metadata_never_breaks_list_or_info() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        tm.submit(simple_task, 1, task_id="plain", metadata={"owner": "ann"})
        tm.submit(simple_task, 2, task_id="deep", metadata={"tree": deep(3_000)})
        tm.submit(simple_task, 3, task_id="bigint", metadata={"n": 10**5_000})
        odd: dict[Any, Any] = {"obj": RaisingRepr(), RaisingRepr(): 1}
        tm.submit(simple_task, 4, task_id="repr", metadata=odd)
        tm.submit(simple_task, 5, task_id="nan", metadata={"x": math.nan, "many": list(range(100_000))})
        listing = await client.get("/tasks")
        assert listing.status_code == 200
        assert [t["task_id"] for t in listing.json()["tasks"]] == ["plain", "deep", "bigint", "repr", "nan"]
        for tid in ("plain", "deep", "bigint", "repr", "nan"):
            reply = await client.get(f"/tasks/{tid}")
            assert reply.status_code == 200, tid
            assert reply.json()["task_id"] == tid
        assert (await client.get("/tasks/plain")).json()["metadata"] == {"owner": "ann"}
        assert "int of" in (await client.get("/tasks/bigint")).json()["metadata"]["n"]
        assert "repr failed" in (await client.get("/tasks/repr")).json()["metadata"]["obj"]


def segment(task_id: str) -> str:
    """A task id as one path segment (as the dashboard encodes it: dots too, or '..' would be resolved)."""
    return quote(task_id, safe="").replace(".", "%2E")


ODD_IDS = ["report 2024", "rapport-été", "export/42", "_x", "a?b#c&d", "%41", "..", "cancel"]


async def test_every_id_submit_accepts_is_addressable() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm, authorize=allow_all)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        for tid in ODD_IDS:
            tm.submit(slow_task, 60, task_id=tid)
        for tid in ODD_IDS:
            path = "/tasks/" + segment(tid)
            info = await client.get(path)
            assert info.status_code == 200, (tid, info.text)
            assert info.json()["task_id"] == tid
            cancel = await client.post(path + "/cancel", headers={"X-Genro-Tasks": "1"})
            assert cancel.status_code == 200, (tid, cancel.text)
            assert cancel.json()["task"]["status"] == "cancelled"
            result = await client.get(path + "/result")
            assert result.status_code == 409
            assert result.json()["task"]["task_id"] == tid
            by_query = await client.get("/task", params={"id": tid})  # the form the dashboard uses
            assert by_query.json()["task_id"] == tid
        assert (await client.get("/tasks/%FF")).status_code == 400  # not UTF-8: a clear 400, not a 500
        assert (await client.get("/task")).status_code == 400


async def test_405_names_the_allowed_methods_and_head_works() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm, authorize=allow_all)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        tm.submit(simple_task, 1, task_id="t")
        for path in ("/", "/tasks", "/tasks/t", "/events", "/config"):
            reply = await client.post(path)
            assert reply.status_code == 405, path
            assert reply.headers["allow"] == "GET, HEAD", path
        reply = await client.get("/tasks/t/cancel")
        assert reply.status_code == 405
        assert reply.headers["allow"] == "POST"
        for path in ("/", "/tasks", "/tasks/t", "/events", "/tasks/t/events"):
            head = await client.head(path)
            assert head.status_code == 200, path
            assert head.content == b""
        page = await client.head("/")
        assert int(page.headers["content-length"]) == len((await client.get("/")).content)


async def test_lifespan_shutdown_is_bounded_then_cancels() -> None:
    tm = TaskManager(1)
    app = TaskManagerLifespan(TaskAPI(), tm, shutdown_timeout=0.5)
    with trio.fail_after(30):  # before the fix: shutdown waited for the 60 s job and the queue behind it
        async with running(app):
            busy = tm.submit(slow_task, 60)
            queued = [tm.submit(slow_task, 60) for _ in range(3)]
            await wait_status(tm, busy, TaskStatus.RUNNING)
    assert not tm.is_running
    assert await tm.status(busy) is TaskStatus.CANCELLED
    assert [await tm.status(t) for t in queued] == [TaskStatus.CANCELLED] * 3
    assert TaskManagerLifespan(TaskAPI()).shutdown_timeout == 10.0  # bounded by default
    for bad in (-1, math.nan, math.inf, "5"):
        with pytest.raises(ValueError, match="shutdown_timeout"):
            TaskManagerLifespan(TaskAPI(), shutdown_timeout=bad)  # type: ignore[arg-type]


@asynccontextmanager
async def event_stream(url: str, path: str) -> AsyncIterator[trio.MemoryReceiveChannel[tuple[str, Any]]]:
    """Open a Server-Sent-Events stream; yield a channel of (event, data)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    send_channel, receive_channel = trio.open_memory_channel[tuple[str, Any]](math.inf)

    async def pump(stream: trio.SocketStream) -> None:
        buffer = b""
        kind = ""
        head_done = False
        async with send_channel:
            while chunk := await stream.receive_some(65536):
                buffer += chunk
                if not head_done:
                    if b"\r\n\r\n" not in buffer:
                        continue
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    assert b" 200 " in head.split(b"\r\n")[0], head
                    head_done = True
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    text = line.decode()
                    if text.startswith("event: "):
                        kind = text[7:]
                    elif text.startswith("data: "):
                        send_channel.send_nowait((kind, json.loads(text[6:])))

    stream = await trio.open_tcp_stream(host, int(port))
    async with stream, trio.open_nursery() as nursery:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        nursery.start_soon(pump, stream)
        yield receive_channel
        nursery.cancel_scope.cancel()


async def test_event_stream_subscribes_before_it_says_hello() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm)) as url, event_stream(url, "/api/events") as events:
        with trio.fail_after(20):
            kind, _ = await events.receive()
            assert kind == "hello"
            tid = tm.submit(simple_task, 1)  # right after hello: must be on the stream
            async for kind, data in events:
                if kind == "task" and data["task_id"] == tid and data["status"] == "completed":
                    break


@pytest.mark.parametrize("backlog", [None, 100])
async def test_a_burst_never_loses_a_final_state(backlog: int | None) -> None:
    """2,500 submits at once: every final state arrives, or the stream says resync."""
    n = 2_500
    tm = TaskManager(2)
    options = {} if backlog is None else {"stream_backlog": backlog}
    async with (
        running(api_app(tm, **options)) as url,
        httpx.AsyncClient(base_url=url + "/api") as client,
        event_stream(url, "/api/events") as events,
    ):
        rank = {s.value: i for i, s in enumerate(TaskStatus)}
        seen: dict[str, str] = {}

        def merge(task: dict[str, Any]) -> None:
            old = seen.get(task["task_id"])
            if old is None or rank[task["status"]] >= rank[old]:
                seen[task["task_id"]] = task["status"]

        resyncs = 0
        with trio.fail_after(60):
            kind, _ = await events.receive()
            assert kind == "hello"
            ids = [tm.submit(simple_task, i) for i in range(n)]
            async for kind, data in events:
                if kind == "task":
                    merge(data)
                elif kind == "resync":
                    resyncs += 1
                    offset = 0
                    while True:
                        page = (await client.get("/tasks", params={"limit": 500, "offset": offset})).json()
                        for task in page["tasks"]:
                            merge(task)
                        offset += len(page["tasks"])
                        if not page["tasks"] or offset >= page["total"]:
                            break
                if all(seen.get(t) == "completed" for t in ids):
                    break
        if backlog is not None:
            assert resyncs > 0  # the client fell behind and was told so


async def test_dashboard_cannot_be_framed_and_runs_no_inline_script() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        for path in ("/", "/dashboard.js"):
            reply = await client.get(path)
            assert reply.status_code == 200
            csp = reply.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp
            assert reply.headers["x-frame-options"] == "DENY"
            script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
            assert "'unsafe-inline'" not in script_src
        assert "<script>" not in (await client.get("/")).text  # the script is the external file
        assert (await client.get("/dashboard.js")).headers["content-type"].startswith("text/javascript")


def test_the_dashboard_knows_every_status() -> None:
    """A new TaskStatus is one edit here (its colour) plus its handling; rank and finality follow."""
    from genro_tasks.asgi._dashboard import STATUS_COLOURS, status_table

    assert set(STATUS_COLOURS) == set(TaskStatus)
    table = status_table()
    assert [s["name"] for s in table] == [s.value for s in TaskStatus]
    for entry in table:
        status = TaskStatus(entry["name"])
        assert entry["terminal"] is status.is_terminal
        assert entry["colour"] == STATUS_COLOURS[status]
    live = [s["rank"] for s in table if not s["terminal"]]
    assert live == sorted(live)
    assert all(s["rank"] > max(live) for s in table if s["terminal"])


async def test_example_app_refuses_forgeries_floods_and_bad_numbers_and_never_leaves_a_partial_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples import export_app

    monkeypatch.setenv("EXPORT_REPORT_DIR", str(tmp_path))
    app = export_app.make_app(max_workers=1, max_queued=2)
    tm = app.tasks
    header = {"X-Requested-With": "exports"}
    async with running(app) as url, httpx.AsyncClient(base_url=url) as client:
        forged = await client.post("/exports", params={"user_id": 1}, data={"a": "b"})  # a cross-site form post
        assert forged.status_code == 403
        for bad in ("nan", "inf", "-1", "0", "61", "soon"):
            reply = await client.post("/exports", params={"user_id": 1, "seconds": bad}, headers=header)
            assert reply.status_code == 422, bad
            assert "seconds" in reply.json()["error"]
        assert tm.list_tasks() == []

        started = await client.post("/exports", params={"user_id": 7, "seconds": 60}, headers=header)
        assert started.status_code == 202
        victim = started.json()["task_id"]
        for _ in range(2):  # fills the queue (max_queued=2) behind the running export
            assert (
                await client.post("/exports", params={"user_id": 8, "seconds": 60}, headers=header)
            ).status_code == 202
        flood = await client.post("/exports", params={"user_id": 9, "seconds": 60}, headers=header)
        assert flood.status_code == 429
        assert flood.headers["retry-after"]

        async for info in tm.watch(victim):  # the report is being written
            if info.progress:
                break
        assert list(tmp_path.glob("*.part"))
        assert await tm.cancel(victim)  # hard: the worker is killed mid-write
        assert not list(tmp_path.glob("report-7-*.csv"))  # no half-written report under a report's name
        for info in tm.list_tasks(TaskStatus.PENDING):
            await tm.cancel(info.task_id)

        done = await client.post("/exports", params={"user_id": 5, "seconds": 0.2}, headers=header)
        with trio.fail_after(30):
            path = Path(await tm.result(done.json()["task_id"]))
        assert path.read_text().count("\n") == 201  # the whole report
        assert not list(tmp_path.glob("*.part"))  # the killed export's partial file was cleaned up


async def test_prometheus_metrics_after_a_known_run() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from jobs import allocate, exit_hard, failing_task

    tm = TaskManager(1, max_queued=2)
    api = TaskAPI()

    async def routes(scope: Scope, receive: Receive, send: Send) -> None:
        await api({**scope, "root_path": ""}, receive, send)

    app = TaskManagerLifespan(routes, tm, metrics=True, shutdown_wait=False)

    def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async with running(app) as url, httpx.AsyncClient(base_url=url) as client:
        with trio.fail_after(60):
            for i in range(3):
                await tm.result(tm.submit(simple_task, i))
            ends: list[tuple[type[Exception], Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = [
                # one at a time: the queue holds only two
                (ValueError, failing_task, (), {}),
                (TaskTimeout, slow_task, (60,), {"timeout": 0.3}),
                (WorkerCrashed, exit_hard, (3,), {}),
                (MemoryLimitExceeded, allocate, (400,), {"memory_limit": 100 * 1024 * 1024}),
            ]
            for error, func, args, options in ends:
                with pytest.raises(error):
                    await tm.result(tm.options(**options).submit(func, *args))
            victim = tm.submit(slow_task, 60)
            await wait_status(tm, victim, TaskStatus.RUNNING)
            waiting = [tm.options(priority=5).submit(slow_task, 60), tm.submit(slow_task, 60)]
            with pytest.raises(QueueFull):
                tm.submit(slow_task, 60)
            expected = {"completed": 3, "failed": 1, "timeout": 1, "crash": 1, "memory_limit": 1, "cancelled": 0}
            while True:  # the observer runs alongside: wait until it has seen every end
                values = samples((await client.get("/metrics")).text)
                finished = {k: values[("genro_tasks_finished_total", (("outcome", k),))] for k in expected}
                if finished == expected:
                    break
                await trio.sleep(0.02)  # polls a state (the scrape), within fail_after
            assert values[("genro_tasks_running", ())] == 1
            assert values[("genro_tasks_queue_depth", (("priority", "5"),))] == 1
            assert values[("genro_tasks_queue_depth", (("priority", "0"),))] == 1
            assert values[("genro_tasks_rejected_total", ())] == 1
            assert values[("genro_tasks_retained", ())] == 10
            assert values[("genro_tasks_worker_crashes_total", ())] >= 1
            assert values[("genro_tasks_run_seconds_count", ())] == 7  # every task that ran to its end
            assert values[("genro_tasks_queue_wait_seconds_count", ())] == 8  # ... and the one running now
            for tid in (victim, *waiting):
                await tm.cancel(tid)
        reply = await client.get("/metrics")
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")


async def test_listing_sorts_searches_and_counts_on_the_server_and_stats_and_clear() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm, authorize=allow_all)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        for name in ("b-job", "a-job", "c-job"):
            await tm.result(tm.submit(simple_task, 1, task_id=name))
        blocker = tm.submit(slow_task, 60, task_id="zz-blocker")
        await wait_status(tm, blocker, TaskStatus.RUNNING)
        page = (await client.get("/tasks", params={"sort": "task_id", "limit": 2})).json()
        assert [t["task_id"] for t in page["tasks"]] == ["a-job", "b-job"]
        assert page["total"] == 4
        assert page["counts"]["completed"] == 3
        assert page["counts"]["running"] == 1
        newest = (await client.get("/tasks", params={"sort": "-created_at", "limit": 1})).json()
        assert newest["tasks"][0]["task_id"] == "zz-blocker"
        found = (await client.get("/tasks", params={"q": "C-JOB"})).json()
        assert [t["task_id"] for t in found["tasks"]] == ["c-job"]
        assert found["counts"]["completed"] == 3  # counts ignore the filters
        bad = await client.get("/tasks", params={"sort": "colour"})
        assert bad.status_code == 400
        assert "sort must be one of" in bad.json()["error"]

        stats = (await client.get("/stats")).json()
        assert stats["workers_busy"] == 1
        assert stats["tasks_completed"] == 3
        assert stats["tasks_rejected"] == 0

        assert (await client.post("/clear")).status_code == 403  # no anti-CSRF header
        cleared = await client.post("/clear", headers={"X-Genro-Tasks": "1"})
        assert cleared.json() == {"cleared": 3}
        assert [t["task_id"] for t in (await client.get("/tasks")).json()["tasks"]] == ["zz-blocker"]
        await tm.cancel(blocker)

    tm = TaskManager(1)
    async with running(api_app(tm, authorize=deny_all)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        refused = await client.post("/clear", headers={"X-Genro-Tasks": "1"})
        assert refused.status_code == 403
        assert "not authorised to clear" in refused.json()["error"]
        assert (await client.get("/config")).json()["can_clear"] is False


async def test_opentelemetry_one_span_per_task_parented_on_the_submitter() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from genro_tasks.asgi import TaskTracer, trace_metadata
    from jobs import failing_task

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with TaskManager(1) as tm, trio.open_nursery() as nursery:
        tracer = TaskTracer(tm, tracer_provider=provider)
        nursery.start_soon(tracer.run)
        await trio.lowlevel.checkpoint()  # run() has subscribed
        with provider.get_tracer("test").start_as_current_span("request") as request:
            ok = tm.submit(simple_task, 2, metadata=trace_metadata({"user": 1}))
        bad = tm.submit(failing_task)
        with trio.fail_after(30):
            assert await tm.result(ok) == 4
            with pytest.raises(ValueError, match="intentionally"):
                await tm.result(bad)
            # The request's span and one per task; the tracer runs alongside: poll its output.
            while len(exporter.get_finished_spans()) < 3:  # noqa: ASYNC110
                await trio.sleep(0.01)
        await tm.shutdown()
    spans = {s.attributes["genro_tasks.task_id"]: s for s in exporter.get_finished_spans() if s.attributes}
    traced = spans[ok]
    assert traced.parent is not None
    assert traced.parent.span_id == request.get_span_context().span_id
    assert traced.context.trace_id == request.get_span_context().trace_id
    assert [e.name for e in traced.events] == ["started", "completed"]
    assert traced.start_time is not None
    assert traced.end_time is not None
    assert traced.start_time <= traced.events[0].timestamp <= traced.end_time
    assert spans[bad].parent is None
    assert spans[bad].status.status_code is StatusCode.ERROR
    assert dict(spans[bad].attributes or {})["genro_tasks.outcome"] == "failed"
