"""Attacks on the kill paths of the process pool: jobs that harm their own worker, with real processes.

Each test waits on states and events (never on a lucky sleep) and bounds every wait with
``trio.fail_after``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from genro_tasks import TaskManager
from jobs_kill import leave_hostile_stdout
from jobs_pipeline import mark_started
from test_pipelining import _busy_worker, _held_ahead


@pytest.mark.parametrize("kind", ["closed-raises", "flush-exits"])
async def test_a_job_that_leaves_a_hostile_stdout_keeps_its_result_and_its_worker(tmp_path: Path, kind: str) -> None:
    """The worker's own code after the job (flushing, restoring std streams) survives what the job left.

    The job is held behind another, so the worker takes the next job's ticket before its clean-up: its
    result leaves after that clean-up, and a clean-up that raised lost it (WorkerCrashed).
    """
    trace = tmp_path / "trace"
    async with TaskManager(1) as tm:
        long, pid, release = await _busy_worker(tm, tmp_path)
        hostile = tm.submit(leave_hostile_stdout, kind)
        after = tm.submit(mark_started, str(trace))
        for tid in (hostile, after):
            await _held_ahead(tm, tid, pid)
        release.touch()
        with trio.fail_after(20):
            assert await tm.result(long) == pid
            assert await tm.result(hostile) == pid
            assert await tm.result(after) == pid  # the same worker lived on
        assert tm.statistics().worker_crashes == 0
        assert trace.read_text().splitlines() == [str(pid)]
