"""The seed's own flow under ``hypercorn --workers 2`` with a shared store: start an export
in one request, check it in the next, whichever server process answers each."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import httpx
import trio

from test_asgi import example_server, sse_events

ROOT = Path(__file__).resolve().parent.parent
EXPORTS = 6


async def test_every_lookup_answers_from_every_server_process(tmp_path: Path) -> None:
    env = {"EXPORT_REPORT_DIR": str(tmp_path / "reports"), "EXPORT_TASK_STORE": str(tmp_path / "tasks.db")}
    async with example_server(env, workers=2) as url:
        # No keep-alive: every request opens its own connection, so the kernel hands
        # each one to whichever server process accepts first.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            ids = []
            submitted_by = set()
            for user in range(EXPORTS):
                started = await client.post(
                    "/exports", params={"user_id": user, "seconds": 0.5}, headers={"X-Requested-With": "exports"}
                )
                assert started.status_code == 202, started.text
                ids.append(started.json()["task_id"])
                submitted_by.add(started.headers["x-served-by"])
            answered: dict[str, set[str]] = defaultdict(set)
            statuses: dict[str, str] = {}
            with trio.fail_after(90):
                # Ask about every export until each is finished and each was answered by both processes.
                while len(statuses) < EXPORTS or any(len(answered[t]) < 2 for t in ids):
                    for task_id in ids:
                        reply = await client.get(f"/exports/{task_id}")
                        assert reply.status_code == 200, (task_id, reply.status_code, reply.text)
                        answered[task_id].add(reply.headers["x-served-by"])
                        body = reply.json()
                        if body["status"] in ("completed", "failed", "cancelled"):
                            statuses[task_id] = body["status"]
                            if body["status"] == "completed":
                                assert Path(body["report_path"]).read_text().startswith("row,user,amount")
            assert set(statuses.values()) == {"completed"}
            servers = set().union(*answered.values())
            assert len(servers) == 2
            # Live event streams follow a task wherever it runs: four streams, each on its own
            # connection (so served by either process), all see the export through to its end.
            started = await client.post(
                "/exports", params={"user_id": 99, "seconds": 1.5}, headers={"X-Requested-With": "exports"}
            )
            live = started.json()["task_id"]
            finals: list[str] = []

            async def follow() -> None:
                events = await sse_events(url, f"/tasks/tasks/{live}/events", lambda e: False)
                finals.append(events[-1]["status"])

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for _ in range(4):
                        nursery.start_soon(follow)
            assert finals == ["completed"] * 4
            # The dashboard's API lists every task of the store, from either process.
            for _ in range(20):
                listing = await client.get("/tasks/tasks")
                assert listing.status_code == 200
                assert set(ids) <= {t["task_id"] for t in listing.json()["tasks"]}
