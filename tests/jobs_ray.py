"""Job functions for the Ray backend's tests (imported by name on Ray workers)."""

from __future__ import annotations

import os
import time

from genro_tasks_worker import report_progress


def where() -> tuple[int, str]:
    """This worker's pid and Ray node id (read from Ray's environment, without importing trio)."""
    import ray

    return os.getpid(), ray.get_runtime_context().get_node_id()


def announce_then_sleep(seconds: float) -> None:
    """Report this worker's node as a progress message, then sleep."""
    import ray

    report_progress(0.5, ray.get_runtime_context().get_node_id())
    time.sleep(seconds)


def count_starts_then_exit(path: str) -> None:
    """Note each start in ``path``, then kill this worker process (a crash, not an exception)."""
    with open(path, "a") as f:
        f.write("started\n")
    os._exit(3)


def wait_for_path(path: str) -> str:
    """Wait until ``path`` exists (the test opens this gate), then return it."""
    while not os.path.exists(path):
        time.sleep(0.005)
    return path
