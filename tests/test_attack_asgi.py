"""Attacks on the ASGI API, the dashboard and the example application, each
against a real hypercorn (trio worker) and real worker processes.

What held is listed in the module's report; the tests here are the defects that
were found, each failing on the code before its fix.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from browser_helpers import CHROMIUM, CHROMIUM_ARGS, serve
from genro_tasks import TaskManager, TaskStatus, testing
from genro_tasks.asgi import Receive, Scope, Send, TaskManagerLifespan
from jobs import slow_task
from jobs_api import many_numbers
from test_asgi import allow_all, api_app, running


async def test_a_repeated_parameter_is_refused_naming_it() -> None:
    """``?id=a&id=b`` used to act on ``a`` silently (and ``?limit=1&limit=500`` to list 1):
    a proxy or an authorisation layer reading the other value would disagree with the API."""
    tm = TaskManager(1)
    async with running(api_app(tm, authorize=allow_all)) as url, httpx.AsyncClient(base_url=url) as client:
        blocker = tm.submit(slow_task, 60)
        queued = tm.submit(slow_task, 60)
        with trio.fail_after(20):
            reply = await client.get("/api/tasks", params=[("limit", "1"), ("limit", "500")])
            assert reply.status_code == 400
            assert "'limit'" in reply.json()["error"]
            reply = await client.post(
                "/api/task/cancel", params=[("id", queued), ("id", blocker)], headers={"X-Genro-Tasks": "1"}
            )
            assert reply.status_code == 400
            assert "'id'" in reply.json()["error"]
            reply = await client.post(
                f"/api/tasks/{queued}/cancel", params=[("grace", "1"), ("grace", "2")], headers={"X-Genro-Tasks": "1"}
            )
            assert reply.status_code == 400
            assert "'grace'" in reply.json()["error"]
            assert await tm.status(queued) is TaskStatus.PENDING  # nothing was cancelled
            assert await tm.status(blocker) in (TaskStatus.PENDING, TaskStatus.RUNNING)
            single = await client.get("/api/tasks", params={"limit": "1"})
            assert single.status_code == 200
            assert len(single.json()["tasks"]) == 1


async def test_example_app_refuses_a_user_id_no_report_can_be_named_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 400-digit user_id was accepted (202) and the export then failed with
    ``OSError: File name too long``; it is now refused at the call, naming user_id."""
    from examples import export_app

    monkeypatch.setenv("EXPORT_REPORT_DIR", str(tmp_path))
    app = export_app.make_app(max_workers=1, store=tmp_path / "tasks.db")
    header = {"X-Requested-With": "exports"}
    async with running(app) as url, httpx.AsyncClient(base_url=url) as client:
        with trio.fail_after(20):
            for bad in ("9" * 400, "-1", "1" + "0" * 18):
                reply = await client.post("/exports", params={"user_id": bad, "seconds": 1}, headers=header)
                assert reply.status_code == 422, bad
                assert "user_id" in reply.json()["error"]
            repeated = await client.post("/exports", params=[("user_id", "1"), ("user_id", "2")], headers=header)
            assert repeated.status_code == 422
            assert "user_id" in repeated.json()["error"]
            assert app.tasks.list_tasks() == []
            good = await client.post("/exports", params={"user_id": 10**17, "seconds": 0.01}, headers=header)
            assert good.status_code == 202
            task_id = good.json()["task_id"]
            await testing.wait_for_status(app.tasks, task_id, TaskStatus.COMPLETED)


async def test_groups_have_a_query_form_for_names_a_browser_resolves() -> None:
    """A group named ``..`` (a legal name) had no route a browser could reach:
    ``groups/../cancel`` is resolved to ``cancel``. ``/group?name=`` and
    ``/group/cancel?name=`` reach any group, as ``/task?id=`` reaches any task."""
    tm = TaskManager(1)
    async with running(api_app(tm, authorize=allow_all)) as url, httpx.AsyncClient(base_url=url) as client:
        dots = tm.options(group="..")
        first, second = dots.submit(slow_task, 60), dots.submit(slow_task, 60)
        with trio.fail_after(20):
            info = await client.get("/api/group", params={"name": ".."})
            assert info.status_code == 200
            assert info.json()["total"] == 2
            assert (await client.head("/api/group", params={"name": ".."})).status_code == 200
            missing = await client.get("/api/group")
            assert missing.status_code == 400
            assert "name" in missing.json()["error"]
            assert (await client.get("/api/group", params={"name": "nope"})).status_code == 404
            unguarded = await client.post("/api/group/cancel", params={"name": ".."})
            assert unguarded.status_code == 403
            assert (await client.get("/api/group/cancel", params={"name": ".."})).status_code == 405
            reply = await client.post("/api/group/cancel", params={"name": ".."}, headers={"X-Genro-Tasks": "1"})
            assert reply.status_code == 200, reply.text
            assert reply.json()["cancelled"] == 2
            assert await tm.status(first) is TaskStatus.CANCELLED
            assert await tm.status(second) is TaskStatus.CANCELLED


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found: install Debian's 'chromium' package")
def test_dashboard_cancels_a_group_named_dot_dot(tmp_path: Path) -> None:
    """The dashboard's "cancel group" posted to ``groups/../cancel``, which the
    browser resolved to ``cancel`` (404): a group named ``..`` could not be cancelled."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with serve("browser_app:app") as server:
        with urllib.request.urlopen(urllib.request.Request(server + "/setup-dot-group", method="POST"), timeout=30):
            pass
        with playwright_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 520})
                page.set_default_timeout(30_000)
                alerts: list[str] = []

                def answer(dialog: object) -> None:
                    if dialog.type == "alert":  # type: ignore[attr-defined]
                        alerts.append(dialog.message)  # type: ignore[attr-defined]
                    dialog.accept()  # type: ignore[attr-defined]

                page.on("dialog", answer)
                page.goto(server + "/tasks/")
                group = 'tr.group[data-group=".."]'
                page.wait_for_function(
                    "s => document.querySelector(s)?.textContent.includes('1 running')", arg=f"{group} td.status"
                )
                page.click(f"{group} button.cancel")
                page.wait_for_function(
                    "s => document.querySelector(s).textContent.includes('2/2 done')",
                    arg=f"{group} td.counts",
                    timeout=10_000,
                )
                assert "2 cancelled" in page.inner_text(f"{group} td.status")
                assert alerts == []
            finally:
                browser.close()


async def test_a_large_result_is_served_without_stalling_the_event_loop() -> None:
    """``GET /tasks/{id}/result`` encoded a large result with one ``json.dumps`` call:
    the loop (every other request, stream and the scheduler) stood still for most of
    the request. The longest pause of the loop must now be a small part of it."""
    tm = TaskManager(1)
    async with running(api_app(tm)) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        count = 3_000_000
        task_id = tm.submit(many_numbers, count)
        with trio.fail_after(60):
            await tm.result(task_id)  # fetched and unpickled now: the request below only encodes
            longest = 0.0
            served = trio.Event()

            async def ticker() -> None:
                nonlocal longest
                last = trio.current_time()
                while not served.is_set():
                    await trio.sleep(0.001)
                    now = trio.current_time()
                    longest = max(longest, now - last)
                    last = now

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                began = trio.current_time()
                reply = await client.get(f"/api/tasks/{task_id}/result")
                took = trio.current_time() - began
                served.set()
        assert reply.status_code == 200
        assert reply.json()["result"][-1] == count - 1
        assert longest < took / 3, (longest, took)


async def _drive_lifespan(app: TaskManagerLifespan, events: list[str]) -> list[dict[str, Any]]:
    """Send ``events`` to ``app``'s lifespan as a server does; return what it answered."""
    sent: list[dict[str, Any]] = []
    pending = iter(events)
    answered = trio.Event()

    async def receive() -> dict[str, Any]:
        kind = next(pending, None)
        if kind is None:
            await trio.sleep_forever()
        return {"type": kind}

    async def send(message: Any) -> None:
        sent.append(message)
        answered.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def lifespan() -> None:
                try:
                    await app({"type": "lifespan"}, receive, send)
                except RuntimeError:
                    pass  # an app that raises: the server logs it

            nursery.start_soon(lifespan)
            await answered.wait()
            if sent[0]["type"] == "lifespan.startup.failed":
                nursery.cancel_scope.cancel()  # as hypercorn: it stops the lifespan and exits
    return sent


async def test_an_app_that_fails_its_startup_leaves_no_manager_running() -> None:
    """The wrapped app answering ``lifespan.startup.failed`` (the server will not run)
    left the manager it wraps running, with its worker processes, for good: nothing
    would ever shut it down."""

    async def refuses(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "the app's database is down"})

    tm = TaskManager(2)
    app = TaskManagerLifespan(refuses, tm)
    sent = await _drive_lifespan(app, ["lifespan.startup"])
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "database is down" in sent[0]["message"]
    assert not tm.is_running
    assert testing.worker_pids(tm) == frozenset()


async def test_an_app_that_raises_at_shutdown_still_shuts_the_manager_down() -> None:
    """The wrapped app raising on ``lifespan.shutdown`` skipped the manager's shutdown:
    its running task was never drained and its workers outlived the lifespan."""
    tm = TaskManager(1)

    async def breaks_at_shutdown(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise RuntimeError("the app's own shutdown failed")

    app = TaskManagerLifespan(breaks_at_shutdown, tm, shutdown_timeout=20)
    events = ["lifespan.startup"]
    sent: list[dict[str, Any]] = []
    task_id = ""

    async def receive() -> dict[str, Any]:
        nonlocal task_id
        if events:
            return {"type": events.pop()}
        task_id = tm.submit(slow_task, 1)
        await testing.wait_for_status(tm, task_id, TaskStatus.RUNNING)
        return {"type": "lifespan.shutdown"}

    async def send(message: Any) -> None:
        sent.append(message)

    raised: list[BaseException] = []
    with trio.fail_after(30):
        try:
            await app({"type": "lifespan"}, receive, send)
        except* RuntimeError as group:  # the app's error goes on to the server, which logs it
            raised.extend(group.exceptions)
    assert "own shutdown failed" in str(raised[0])
    assert [m["type"] for m in sent] == ["lifespan.startup.complete"]
    assert not tm.is_running
    assert testing.worker_pids(tm) == frozenset()
    assert await tm.result(task_id) == "done"  # drained, not lost


async def test_a_malformed_ungrouped_flag_is_refused_naming_it() -> None:
    """``?ungrouped=yes`` was read as "no" and listed every task, grouped or not."""
    tm = TaskManager(1)
    async with running(api_app(tm)) as url, httpx.AsyncClient(base_url=url) as client:
        tm.options(group="nightly").submit(slow_task, 60)
        loose = tm.submit(slow_task, 60)
        with trio.fail_after(20):
            for bad in ("yes", "2", "on"):
                reply = await client.get("/api/tasks", params={"ungrouped": bad})
                assert reply.status_code == 400, bad
                assert "ungrouped" in reply.json()["error"]
            for good, ids in (("1", [loose]), ("true", [loose]), ("0", None), ("false", None)):
                reply = await client.get("/api/tasks", params={"ungrouped": good})
                assert reply.status_code == 200
                listed = [t["task_id"] for t in reply.json()["tasks"]]
                assert listed == ids if ids is not None else len(listed) == 2


async def test_every_mutating_route_goes_through_authorize_whatever_the_method() -> None:
    """With an ``authorize`` that refuses, no route and no method changes anything:
    POST is refused with 403, every other method (HEAD, GET, OPTIONS, PUT) with 405."""
    asked: list[tuple[str, str | None]] = []

    def refuse(scope: Scope, action: str, task_id: str | None) -> bool:
        asked.append((action, task_id))
        return False

    tm = TaskManager(1)
    async with running(api_app(tm, authorize=refuse)) as url, httpx.AsyncClient(base_url=url) as client:
        running_id = tm.options(group="g").submit(slow_task, 60)
        with trio.fail_after(30):
            await testing.wait_for_status(tm, running_id, TaskStatus.RUNNING)
        queued_id = tm.submit(slow_task, 60)
        later_id = tm.submit(slow_task, 0)
        routes = {
            f"/api/tasks/{running_id}/cancel": ("cancel", running_id),
            f"/api/task/cancel?id={queued_id}": ("cancel", queued_id),
            f"/api/tasks/{later_id}/requeue": ("requeue", later_id),
            f"/api/task/requeue?id={later_id}": ("requeue", later_id),
            "/api/groups/g/cancel": ("cancel_group", "g"),
            "/api/group/cancel?name=g": ("cancel_group", "g"),
            "/api/clear": ("clear", None),
        }
        with trio.fail_after(30):
            for route, expected in routes.items():
                asked.clear()
                reply = await client.post(route, headers={"X-Genro-Tasks": "1"})
                assert reply.status_code == 403, route
                assert asked == [expected], route
                for method in ("HEAD", "GET", "OPTIONS", "PUT", "DELETE"):
                    reply = await client.request(method, route, headers={"X-Genro-Tasks": "1"})
                    assert reply.status_code == 405, (method, route)
            assert await tm.status(running_id) is TaskStatus.RUNNING
            assert await tm.status(queued_id) is TaskStatus.PENDING
            assert len(tm.list_tasks()) == 3
