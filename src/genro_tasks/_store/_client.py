"""The backend of a client-only manager (``TaskManager(store=..., max_workers=0)``): no workers at all."""

from __future__ import annotations

import trio

from .._backend import BackendListener, BackendStatistics, ExecutionBackend


class NoWorkers(ExecutionBackend):
    """Runs nothing: the manager claims no task, and only reads, submits to, watches and cancels the store."""

    capacity = 0

    def __init__(self) -> None:
        self._stopped = trio.Event()

    async def serve(self, listener: BackendListener) -> None:
        listener.all_ready()
        await trio.sleep_forever()

    def free_slots(self) -> int:
        return 0

    def dispatch(self, key: int, payload: bytes) -> None:  # pragma: no cover - free_slots() is 0
        raise AssertionError("a client-only TaskManager runs no job")

    def interrupt(self, key: int) -> None:  # pragma: no cover - nothing is dispatched
        pass

    def kill(self, key: int) -> None:  # pragma: no cover - nothing is dispatched
        pass

    def begin_stop(self) -> None:
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(0, 0, 0, 0, 0)
