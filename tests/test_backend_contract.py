"""The execution backend contract, checked against a real backend with a recording listener.

Every backend (the process pool today, a Ray backend later) must report what
the scheduler relies on: ready once, started before done, a killed job lost
(never done, and not retryable once it started), a worker's own death as the
loss of its job, the pool whole again after a death, everything in flight lost
when ``serve`` is cancelled. Add a backend to ``BACKENDS`` to hold it to the
same contract.
"""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio

from genro_tasks._backend import ExecutionBackend, Lost, Outcome, Raised, Returned  # the seam under test
from genro_tasks._launch import default_context
from genro_tasks._process_backend import ProcessBackend
from genro_tasks_worker._protocol import PICKLE_PROTOCOL
from jobs import exit_hard, failing_task, simple_task, slow_task


def _ray_backend() -> ExecutionBackend:
    from genro_tasks.ray import RayBackend

    return RayBackend(max_workers=2)


BACKENDS: dict[str, Callable[[], ExecutionBackend]] = {
    "process-forkserver": lambda: ProcessBackend(2, default_context("forkserver")),
    "process-spawn": lambda: ProcessBackend(2, default_context("spawn")),
    "ray": _ray_backend,
}
#: Backends whose workers are a fixed pool of processes of their own (a dead one is replaced).
POOLS = frozenset({"process-forkserver", "process-spawn"})


@pytest.fixture(params=sorted(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "ray":
        pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (.ci/run does)")
        request.getfixturevalue("local_ray")
    return name


def _payload(func: Callable[..., Any], *args: Any) -> bytes:
    return pickle.dumps((func, args, {}, None), PICKLE_PROTOCOL)


class Recorder:
    """A BackendListener that keeps every report and wakes waiters on each."""

    def __init__(self, backend: ExecutionBackend) -> None:
        self.backend = backend
        self.events: list[tuple[str, Any, Any]] = []
        self.ready = 0
        self._changed = trio.Event()

    def _note(self, kind: str, key: Any = None, value: Any = None) -> None:
        self.events.append((kind, key, value))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    def of(self, key: int) -> list[tuple[str, Any]]:
        return [(kind, value) for kind, k, value in self.events if k == key]

    def ended(self, key: int) -> bool:
        return any(kind in ("done", "lost") for kind, _ in self.of(key))

    # --- BackendListener ---------------------------------------------------
    def started(self, key: int, worker: int) -> None:
        self._note("started", key, worker)

    def progress(self, key: int, fraction: float | None, message: str | None) -> None:
        self._note("progress", key, (fraction, message))

    def done(self, key: int, outcome: Outcome) -> None:
        self._note("done", key, outcome)

    def lost(self, key: int, lost: Lost) -> None:
        self._note("lost", key, lost)

    def capacity_changed(self) -> None:
        self._note("capacity")

    def all_ready(self) -> None:
        self.ready += 1
        self._note("all_ready")

    def start_failed(self, error: BaseException, none_left: bool) -> None:
        self._note("start_failed", None, error)

    def failed(self, error: BaseException) -> None:
        self._note("failed", None, error)


@pytest.fixture
async def served(backend_name: str) -> AsyncIterator[Recorder]:
    backend = BACKENDS[backend_name]()
    recorder = Recorder(backend)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backend.serve, recorder)
        with trio.fail_after(30):
            await recorder.wait_for(lambda: recorder.ready == 1 and backend.free_slots() == backend.capacity)
        yield recorder
        nursery.cancel_scope.cancel()


async def test_a_job_starts_then_ends_once(served: Recorder) -> None:
    backend = served.backend
    backend.dispatch(1, _payload(simple_task, 21))
    backend.dispatch(2, _payload(failing_task))
    assert backend.free_slots() <= backend.capacity  # at most one job sent ahead per busy worker
    with trio.fail_after(30):
        await served.wait_for(lambda: served.ended(1) and served.ended(2))
        await served.wait_for(lambda: backend.statistics().workers_idle == 2)
    (started, pid), (done, outcome) = served.of(1)
    assert (started, done) == ("started", "done")
    assert pid in backend.worker_pids()
    assert isinstance(outcome, Returned)
    assert outcome.value == 42
    [_, (_, raised)] = served.of(2)
    assert isinstance(raised, Raised)
    assert raised.failure.type_name.endswith("ValueError")
    assert served.ready == 1


async def test_a_killed_job_is_lost_not_done_and_the_pool_is_whole_again(served: Recorder, backend_name: str) -> None:
    backend = served.backend
    pids = backend.worker_pids()
    backend.dispatch(1, _payload(slow_task, 60))
    with trio.fail_after(30):
        await served.wait_for(lambda: bool(served.of(1)))  # started
        backend.kill(1)
        await served.wait_for(lambda: served.ended(1))
        await served.wait_for(lambda: backend.statistics().workers_idle == 2)
    kinds = [kind for kind, _ in served.of(1)]
    assert kinds == ["started", "lost"]
    lost = served.of(1)[-1][1]
    assert isinstance(lost, Lost)
    assert not lost.retryable  # it had started: sending it again could run it twice
    assert lost.worker is not None
    assert lost.worker not in backend.worker_pids()  # reported once dead
    if backend_name in POOLS:
        assert len(backend.worker_pids()) == 2
        assert len(pids & backend.worker_pids()) == 1  # the killed worker was replaced


async def test_a_worker_that_dies_on_its_own_loses_its_job(served: Recorder, backend_name: str) -> None:
    backend = served.backend
    backend.dispatch(7, _payload(exit_hard, 3))
    with trio.fail_after(30):
        await served.wait_for(lambda: served.ended(7))
    lost = served.of(7)[-1][1]
    assert isinstance(lost, Lost)
    assert not lost.retryable
    if backend_name in POOLS:  # Ray does not say how its worker exited
        assert lost.exitcode == 3


async def test_stopping_lets_idle_workers_exit() -> None:
    backend = BACKENDS["process-forkserver"]()
    recorder = Recorder(backend)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backend.serve, recorder)
        with trio.fail_after(30):
            await recorder.wait_for(lambda: recorder.ready == 1)
            backend.begin_stop()
            await backend.wait_stopped()
        assert backend.worker_pids() == frozenset()
        assert backend.free_slots() == 0
        nursery.cancel_scope.cancel()


@pytest.fixture(params=["process-forkserver", "ray"])
def stoppable(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "ray":
        pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (.ci/run does)")
        request.getfixturevalue("local_ray")
    return name


async def test_cancelling_serve_loses_what_is_in_flight(stoppable: str) -> None:
    backend = BACKENDS[stoppable]()
    recorder = Recorder(backend)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.serve, recorder)
            await recorder.wait_for(lambda: recorder.ready == 1)
            backend.dispatch(1, _payload(slow_task, 60))
            await recorder.wait_for(lambda: bool(recorder.of(1)))
            nursery.cancel_scope.cancel()
    assert [kind for kind, _ in recorder.of(1)] == ["started", "lost"]
    assert backend.worker_pids() == frozenset()
