"""Ray's two Pool adapters: genro_tasks on the Ray backend, and plain Ray driven from trio threads.

Both start their own local Ray (``num_cpus`` = the workers asked for, its files
under the measurement's temporary directory) and shut it down at exit. Plain
Ray is driven at its best: a batch is submitted and gathered in one thread
(``[f.remote(...)]`` then one ``ray.get``), a call is one ``ray.get(f.remote())``
in a thread, and a cancel is ``ray.cancel(force=True)``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import trio

from _common import Job, Pool, wait_for_file

BENCH_DIR = str(Path(__file__).resolve().parent)


@contextmanager
def _ray_env(temp_dir: str) -> Iterator[dict[str, Any]]:
    """``ray.init`` options for a local Ray of the benchmarks (Ray's workers import bench_jobs)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([BENCH_DIR, *([old] if old else [])])
    os.environ.setdefault("RAY_TMPDIR", temp_dir)
    os.makedirs(os.path.join(temp_dir, "ray"), exist_ok=True)
    yield {"_temp_dir": temp_dir, "include_dashboard": False, "log_to_driver": False}


@asynccontextmanager
async def open_genro_ray(workers: int) -> AsyncIterator[Pool]:
    """A TaskManager on a RayBackend that starts (and stops) its own local Ray.

    With ``prefetch=8 * workers``: the setting for throughput the README recommends (Ray then
    always has jobs queued, and the backend submits and collects them a few at a time).
    """
    from _genro import GenroPool
    from genro_tasks import TaskManager
    from genro_tasks.ray import RayBackend

    with tempfile.TemporaryDirectory(prefix="genro-ray-", ignore_cleanup_errors=True) as tmp, _ray_env(tmp) as init:
        tm = TaskManager(
            backend=RayBackend(max_workers=workers, prefetch=8 * workers, init_options={"num_cpus": workers, **init})
        )
        await tm.startup()
        try:
            yield GenroPool(tm)
        finally:
            with trio.CancelScope(shield=True):
                await tm.shutdown(wait=False)


class RayJob:
    def __init__(self, ref: Any) -> None:
        self.ref = ref

    async def reported_running(self) -> bool | None:
        await trio.lowlevel.checkpoint()
        return None  # Ray has no "started" report for a task

    async def result(self) -> Any:
        import ray

        return await trio.to_thread.run_sync(ray.get, self.ref)

    async def cancel(self) -> None:
        import ray
        from ray.exceptions import TaskCancelledError, WorkerCrashedError

        await trio.to_thread.run_sync(lambda: ray.cancel(self.ref, force=True))
        try:
            await self.result()
        except (TaskCancelledError, WorkerCrashedError):
            return
        raise RuntimeError("the task ended on its own before ray.cancel reached it")


class RayPool:
    can_cancel = True

    def __init__(self) -> None:
        import ray

        self._ray = ray
        self._remotes: dict[Callable[..., Any], Any] = {}

    def _remote(self, fn: Callable[..., Any]) -> Any:
        remote = self._remotes.get(fn)
        if remote is None:
            remote = self._remotes[fn] = self._ray.remote(max_retries=0)(fn)
        return remote

    def start(self, fn: Callable[..., Any], *args: Any) -> Job:
        return RayJob(self._remote(fn).remote(*args))

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        remote = self._remote(fn)
        return await trio.to_thread.run_sync(lambda: self._ray.get(remote.remote(*args)))

    async def run_batch(self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
        remote = self._remote(fn)
        values: list[Any] = await trio.to_thread.run_sync(lambda: self._ray.get([remote.remote(*a) for a in args]))
        return values

    async def wait_running(self, job: Job, marker: Path) -> None:
        await wait_for_file(marker)


@asynccontextmanager
async def open_ray(workers: int) -> AsyncIterator[Pool]:
    """Plain Ray: a local Ray with ``workers`` CPUs, one task per job."""
    import ray

    with tempfile.TemporaryDirectory(prefix="plain-ray-", ignore_cleanup_errors=True) as tmp, _ray_env(tmp) as init:
        await trio.to_thread.run_sync(lambda: ray.init(num_cpus=workers, **init))
        try:
            yield RayPool()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(ray.shutdown)
