"""The store's writer thread: how one round answers the claims sent to it.

A real SQLite file, filled through the public API by a client-only manager; the
writer thread is driven directly, with its ops queued before it starts, so they
all fall into its first round.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import trio

import jobs_store as jobs
from genro_tasks import SQLiteStore, TaskManager
from genro_tasks._store._thread import INSERT, ROUND_OPS, STOP, Batch, StoreThread
from genro_tasks._task import TaskRecord


async def _queue(path: Path, priorities: list[int]) -> list[str]:
    """Submit one task per priority to the store's shared queue (nobody claims them); their ids."""
    async with TaskManager(max_workers=0, store=path) as client:
        ids = [client.options(priority=p).submit(jobs.double, i) for i, p in enumerate(priorities)]
        await client.flush()
    return ids


def _run_round(path: Path, claims: list[int], ops: list[tuple[Any, ...]], claims_run: list[int]) -> list[Batch]:
    """Open a writer on ``path``, ask ``claims`` and queue ``ops`` before it starts, stop it after that round."""
    thread = StoreThread(SQLiteStore(path), "c0ffee00c0ffee00", 10_000, None)
    thread.open()
    claim = thread._claim

    def counting_claim(n: int, rev: int) -> Any:
        claims_run.append(n)
        return claim(n, rev)

    thread._claim = counting_claim  # type: ignore[method-assign]
    batches: list[Batch] = []
    stopped = threading.Event()

    def deliver(batch: Batch) -> None:
        batches.append(batch)
        if batch.stopped:
            stopped.set()
        elif len(batches) == 1:
            thread.put((STOP,))

    thread.claims.extend(claims)
    thread.ops.extend(ops)
    thread.start(deliver)
    assert stopped.wait(30), "the writer thread did not stop"
    thread.join(30)
    return batches


async def test_the_claims_of_one_round_are_answered_by_one_claim_in_queue_order(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    ids = await _queue(path, [0, 0, 5, 0, 0, 0])
    claims_run: list[int] = []
    with trio.fail_after(30):
        batches = await trio.to_thread.run_sync(_run_round, path, [2, 3], [], claims_run)
    claims = [(asked, [c.task_id for c in claimed]) for asked, claimed in batches[0].claims]
    assert claims == [(2, [ids[2], ids[0]]), (3, [ids[1], ids[3], ids[4]])]
    assert claims_run == [5]


async def test_a_stopping_writer_claims_nothing_and_the_queue_still_runs_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    ids = await _queue(path, [0, 0])
    claims_run: list[int] = []
    with trio.fail_after(30):
        batches = await trio.to_thread.run_sync(_run_round, path, [2], [(STOP,)], claims_run)
    # The claim and the stop in one round: a process that stops could not give the tasks back.
    assert [claimed for batch in batches for claimed in batch.claims] == [(2, [])]
    assert claims_run == []
    async with TaskManager(max_workers=1, store=path) as tm:
        with trio.fail_after(30):
            assert await tm.gather(ids) == [0, 2]


async def test_a_claim_is_answered_while_a_burst_of_submissions_is_still_being_written(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    (first,) = await _queue(path, [0])
    # A burst of submissions of this process, handed over before the claim: the claim is answered by
    # the first round, which writes only a round's worth of them (the oldest task is the file's).
    burst = [TaskRecord(i, f"burst-{i}", "jobs_store.double", b"job", None, None) for i in range(ROUND_OPS + 10)]
    ops = [(INSERT, rec, None, rec.payload, None) for rec in burst]
    claims_run: list[int] = []
    with trio.fail_after(30):
        batches = await trio.to_thread.run_sync(_run_round, path, [1], ops, claims_run)
    assert [(asked, [c.task_id for c in claimed]) for asked, claimed in batches[0].claims] == [(1, [first])]
    assert batches[0].done == ROUND_OPS
    # Ops handed over before the claim were left for the next round: its shortness would prove nothing.
    assert not batches[0].claims_whole
    assert batches[-1].stopped
    assert max(batch.done for batch in batches) == len(ops) + 1  # the rest, then the stop
