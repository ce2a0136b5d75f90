"""Stateful property test: hypothesis drives a real TaskManager with random steps.

Each example gets its own trio run in a helper thread (hypothesis rules are
synchronous); the TaskManager and its supervisor live in that run, and every
rule crosses into it with ``trio.from_thread.run``. After every step the
invariants below are checked; a ``quiesce`` rule waits for calm and checks
processes and file descriptors.

The bounded profile runs in the normal suite; ``-m slow`` (tox -e soak) runs a
long one.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, precondition, rule

from genro_tasks import (
    ManagerClosed,
    TaskCancelled,
    TaskManager,
    TaskStatus,
    TaskTimeout,
    WorkerCrashed,
    testing,
)
from jobs import exit_hard, failing_task, progress_steps, simple_task, slow_task

T = TypeVar("T")
WORKERS = 2
RANK = {TaskStatus.PENDING: 0, TaskStatus.RUNNING: 1}

JOBS: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
    "fast": (simple_task, (21,)),
    "slow": (slow_task, (0.3,)),
    "fail": (failing_task, ()),
    "crash": (exit_hard, (7,)),
    "progress": (progress_steps, (3, 0.02)),
}


class TrioThread:
    """A trio run in a helper thread that synchronous code can call into."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait(30)

    async def _main(self) -> None:
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._ready.set()
        await self._stop.wait()

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        async def bounded() -> T:
            with trio.fail_after(60):
                return await afn(*args)

        return trio.from_thread.run(bounded, trio_token=self._token)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn`` in the trio thread: state the run owns is read there, never from here."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def close(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def children_of(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return kids


class TaskManagerMachine(RuleBasedStateMachine):
    tasks = Bundle("tasks")

    def __init__(self) -> None:
        super().__init__()
        self.trio = TrioThread()
        self.tm = TaskManager(WORKERS)
        self.trio.run(self.tm.startup)
        self.kind: dict[str, str] = {}
        self.timeouts: dict[str, float | None] = {}
        self.seen: dict[str, TaskStatus] = {}
        self.closed = False
        self.killed: set[int] = set()
        self.fds = fd_count()

    # ------------------------------------------------------------------ rules
    @rule(target=tasks, kind=st.sampled_from(sorted(JOBS)), timeout=st.sampled_from([None, None, 0.15]))
    def submit(self, kind: str, timeout: float | None) -> Any:
        func, args = JOBS[kind]
        if self.closed:
            with pytest.raises(ManagerClosed):
                self.tm.submit(func, *args)
            return multiple()
        tid = self.trio.run(self._submit, func, args, timeout)
        self.kind[tid] = kind
        self.timeouts[tid] = timeout
        return tid

    async def _submit(self, func: Callable[..., Any], args: tuple[Any, ...], timeout: float | None) -> str:
        return self.tm.options(timeout=timeout).submit(func, *args)

    @rule(task=tasks)
    def cancel(self, task: str) -> None:
        before = self._status(task)
        cancelled = self.trio.run(self.tm.cancel, task)
        after = self._status(task)
        assert after.is_terminal
        if cancelled:
            assert after is TaskStatus.CANCELLED
        else:
            assert before.is_terminal or after is not TaskStatus.CANCELLED

    @rule(task=tasks)
    def wait_result(self, task: str) -> None:
        outcome = self.trio.run(self._outcome, task)
        status = self._status(task)
        kind = self.kind[task]
        if status is TaskStatus.COMPLETED:
            expected = {"fast": 42, "slow": "done", "progress": 3}
            assert outcome == expected[kind], (kind, outcome)
        elif status is TaskStatus.CANCELLED:
            assert isinstance(outcome, TaskCancelled)
        else:
            assert status is TaskStatus.FAILED
            if isinstance(outcome, WorkerCrashed):
                # a crash job, or any job whose worker the kill rule SIGKILLed
                assert kind == "crash" or self.killed, outcome
            elif isinstance(outcome, TaskTimeout):
                assert self.timeouts[task] is not None
            else:
                assert kind == "fail", (kind, repr(outcome))
                assert isinstance(outcome, ValueError), outcome

    def _status(self, task: str) -> TaskStatus:
        return self.trio.run_sync(lambda: testing.status(self.tm, task))

    def _statuses(self) -> dict[str, TaskStatus]:
        """Every task's status, read in the trio thread (the run mutates them there)."""
        return self.trio.run_sync(lambda: {info.task_id: info.status for info in self.tm.list_tasks()})

    async def _outcome(self, task: str) -> object:
        try:
            return await self.tm.result(task)
        except BaseException as exc:
            if isinstance(exc, trio.Cancelled):
                raise
            return exc

    @precondition(lambda self: not self.closed)
    @rule(index=st.integers(0, WORKERS - 1))
    def kill_worker(self, index: int) -> None:
        workers = sorted(self.trio.run_sync(lambda: testing.worker_pids(self.tm)))
        if workers:
            pid = workers[index % len(workers)]
            self.killed.add(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it had just died on its own (a crash job)

    @precondition(lambda self: not self.closed)
    @rule()
    def quiesce(self) -> None:
        """Wait until every task is finished and the pool is whole again; check the calm state."""
        pids = self.trio.run(self._quiesce)
        assert len(pids) == WORKERS
        server = testing.forkserver_pid()
        assert server is not None
        assert children_of(server) == pids  # no other process survives
        assert fd_count() == self.fds

    async def _quiesce(self) -> set[int]:
        for info in self.tm.list_tasks():
            if not info.status.is_terminal:
                await self._outcome(info.task_id)

        def calm() -> bool:
            pids = testing.worker_pids(self.tm)
            # A SIGKILL we sent may not have been noticed yet: calm means it was.
            return not (pids & self.killed) and len(pids) == WORKERS and self.tm.statistics().workers_idle == WORKERS

        await testing.wait_until(self.tm, calm)
        return set(testing.worker_pids(self.tm))

    @rule(wait=st.booleans())
    def shutdown(self, wait: bool) -> None:
        self.trio.run(self.tm.shutdown, wait)
        self.closed = True
        assert all(status.is_terminal for status in self._statuses().values())

    # ------------------------------------------------------------- invariants
    @invariant()
    def statuses_only_move_forward(self) -> None:
        running = 0
        for tid, status in self._statuses().items():
            previous = self.seen.get(tid)
            if previous is not None and previous is not status:
                assert not previous.is_terminal, f"{tid}: {previous} -> {status}"
                assert RANK.get(status, 2) > RANK[previous], f"{tid}: {previous} -> {status}"
            self.seen[tid] = status
            running += status is TaskStatus.RUNNING
        assert running <= WORKERS

    def teardown(self) -> None:
        try:
            if not self.closed:
                self.trio.run(self.tm.shutdown, False)
            assert all(status.is_terminal for status in self._statuses().values())
        finally:
            self.trio.close()


TestTaskManagerBounded = TaskManagerMachine.TestCase
TestTaskManagerBounded.settings = settings(
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


@pytest.mark.slow
class TestTaskManagerLong(TaskManagerMachine.TestCase):  # type: ignore[misc,valid-type]
    settings = settings(
        max_examples=150,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
