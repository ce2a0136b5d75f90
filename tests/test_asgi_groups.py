"""The API's groups and requeue routes, against a real hypercorn."""

from __future__ import annotations

import httpx
import trio

from conftest import wait_status, wait_until
from genro_tasks import TaskManager, TaskStatus, testing
from jobs import simple_task, slow_task
from test_asgi import allow_all, api_app, deny_all, running

CSRF = {"X-Genro-Tasks": "1"}


async def test_groups_listing_info_and_filter() -> None:
    tm = TaskManager(2)
    async with running(api_app(tm)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        ids = [tm.options(group="batch").submit(simple_task, i) for i in range(3)]
        loose = tm.submit(simple_task, 9)
        with trio.fail_after(20):
            await tm.gather([*ids, loose])
        listing = (await client.get("/groups")).json()
        assert [g["group"] for g in listing["groups"]] == ["batch"]
        one = (await client.get("/groups/batch")).json()
        assert (one["total"], one["completed"], one["progress"], one["eta"]) == (3, 3, 1.0, 0.0)
        assert (await client.get("/groups/nope")).status_code == 404
        members = (await client.get("/tasks", params={"group": "batch"})).json()
        assert sorted(t["task_id"] for t in members["tasks"]) == sorted(ids)
        assert {t["group"] for t in members["tasks"]} == {"batch"}
        alone = (await client.get("/tasks", params={"ungrouped": "1"})).json()
        assert [t["task_id"] for t in alone["tasks"]] == [loose]
        assert alone["counts"]["completed"] == 4  # counts ignore the filters


async def test_group_cancel_needs_authorize() -> None:
    for authorize, allowed in ((deny_all, False), (allow_all, True)):
        tm = TaskManager(1)
        async with running(api_app(tm, authorize=authorize)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
            ids = [tm.options(group="g").submit(slow_task, 60) for _ in range(2)]
            await wait_status(tm, ids[0], TaskStatus.RUNNING)
            assert (await client.post("/groups/g/cancel")).status_code == 403  # no CSRF header
            reply = await client.post("/groups/g/cancel", headers=CSRF)
            config = (await client.get("/config")).json()
            assert config["can_cancel_group"] is allowed
            if not allowed:
                assert reply.status_code == 403
                assert testing.status(tm, ids[0]) is TaskStatus.RUNNING
                continue
            assert reply.status_code == 200
            assert reply.json()["cancelled"] == 2
            assert reply.json()["group"]["cancelled"] == 2
            assert (await client.get("/groups/g/cancel")).status_code == 405


async def test_requeue_route() -> None:
    tm = TaskManager(1)
    async with running(api_app(tm, authorize=allow_all)) as url, httpx.AsyncClient(base_url=url + "/api") as client:
        tid = tm.submit(simple_task, 4)
        with trio.fail_after(20):
            await tm.result(tid)
            reply = await client.post(f"/tasks/{tid}/requeue", headers=CSRF)
            assert reply.status_code == 200
            assert reply.json()["task"]["attempt"] == 2
            await wait_until(tm, lambda: testing.status(tm, tid) is TaskStatus.COMPLETED)
        info = (await client.get(f"/tasks/{tid}")).json()
        assert (info["attempt"], info["previous_errors"]) == (2, ["requeued after completed"])
        busy = tm.submit(slow_task, 60)
        await wait_status(tm, busy, TaskStatus.RUNNING)
        assert (await client.post(f"/tasks/{busy}/requeue", headers=CSRF)).status_code == 409
        assert (await client.post("/tasks/nope/requeue", headers=CSRF)).status_code == 404
        assert (await client.get("/config")).json()["can_requeue"] is True
