"""Starting and stopping Ray for the tests, and checking that none of it is left running."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import trio

from genro_tasks import TaskManager

TESTS = Path(__file__).resolve().parent


def ray_processes(marker: str) -> list[int]:
    """Pids of the live processes whose command line mentions ``marker`` (a Ray temp dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


def assert_no_ray_left(marker: str, limit: float = 15.0) -> None:
    """Fail unless every process of the Ray under ``marker`` is gone within ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while (left := ray_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)  # a sync fixture's teardown, outside trio: Ray's processes exit on their own time
    assert not left, f"Ray processes left running: {left}"


@contextlib.contextmanager
def local_ray(tmp: Path, num_cpus: int = 2) -> Iterator[None]:
    """A local Ray joined by this process, its session files under ``tmp``; shut down, and checked gone, after."""
    import ray

    temp_dir = str(tmp)
    with ray_env(temp_dir):
        ray.init(num_cpus=num_cpus, _temp_dir=temp_dir, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
            assert_no_ray_left(temp_dir)


@contextlib.contextmanager
def ray_env(temp_dir: str) -> Iterator[None]:
    """Ray's environment for a test: every file under ``temp_dir`` (none in /tmp/ray), and the
    Ray processes started meanwhile can import the tests' job modules (they inherit PYTHONPATH)."""
    old = {name: os.environ.get(name) for name in ("PYTHONPATH", "RAY_TMPDIR")}
    python_path = old["PYTHONPATH"]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), *([python_path] if python_path else [])])
    os.environ["RAY_TMPDIR"] = temp_dir
    os.makedirs(os.path.join(temp_dir, "ray"), exist_ok=True)  # where Ray notes the cluster's address
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


@contextlib.asynccontextmanager
async def ray_manager() -> AsyncIterator[TaskManager]:
    """A started manager on the Ray this process joined; killed (``shutdown(wait=False)``) after."""
    from genro_tasks.ray import RayBackend

    tm = TaskManager(backend=RayBackend())
    with trio.fail_after(30):
        await tm.startup()
    try:
        yield tm
    finally:
        with trio.fail_after(30):
            await tm.shutdown(wait=False)
