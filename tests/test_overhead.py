"""The engine's per-task overhead: no work on the hot path that finds nothing to do."""

from __future__ import annotations

import os
import uuid

import pytest
import trio

from genro_tasks import TaskManager
from genro_tasks._submission import new_task_id
from jobs import add


async def test_result_pipe_is_not_read_when_it_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a read that emptied the pipe, the parent waits for it to be readable again.

    A read that finds nothing costs a syscall and an exception per wake-up:
    the read loop must not issue one after every message it handled.
    """
    empty = 0
    real_readv = os.readv

    def counting_readv(fd: int, buffers: list[memoryview]) -> int:
        nonlocal empty
        try:
            return real_readv(fd, buffers)
        except BlockingIOError:
            empty += 1
            raise

    monkeypatch.setattr(os, "readv", counting_readv)  # the parent's reads only: workers are other processes
    with trio.fail_after(60):
        async with TaskManager(1) as tm:
            for i in range(100):
                assert await tm.run(add, i, 1) == i + 1
            ids = [tm.submit(add, i, 1) for i in range(100)]
            assert [await tm.result(tid) for tid in ids] == [i + 1 for i in range(100)]
    # About two wake-ups per task (STARTED, then the result): one empty read each before.
    assert empty < 20, f"{empty} reads found the result pipe empty for 200 tasks"


def test_generated_task_ids_are_random_uuid4_text() -> None:
    ids = {new_task_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    for task_id in list(ids)[:2_000]:
        parsed = uuid.UUID(task_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, task_id)


async def test_submit_gives_uuid4_ids(tasks: TaskManager) -> None:
    task_id = tasks.submit(add, 1, 2)
    assert uuid.UUID(task_id).version == 4
    with trio.fail_after(30):
        assert await tasks.result(task_id) == 3
