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


def progress_from_a_thread(steps: int) -> int:
    """Report progress from a thread the job starts, then return how many steps it reported."""
    import threading

    def report() -> None:
        for i in range(steps):
            report_progress((i + 1) / steps, f"thread {i + 1}")

    thread = threading.Thread(target=report)
    thread.start()
    thread.join()
    return steps


def fork_and_sleep() -> None:
    """Fork a child that sleeps, report its pid, and sleep (the child holds no tracker connection)."""
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    report_progress(0.5, f"child={pid}")
    time.sleep(3600)


class _Ghost(Exception):
    pass


def raise_a_ghost() -> None:
    """Raise an exception whose class the manager cannot import (it lives only in this worker)."""
    import sys
    import types

    module = types.ModuleType("ghost_module_of_the_worker")
    _Ghost.__module__ = module.__name__
    module._Ghost = _Ghost  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    raise _Ghost("boo")


def hold_the_gil() -> int:
    """Compute in C for a long time, holding the GIL (a huge power)."""
    report_progress(0.0, "computing")
    return len(str(7 ** (10**9)))


def ignore_interrupts(seconds: float) -> str:
    """Sleep ``seconds``, ignoring KeyboardInterrupt (Ray's graceful cancel)."""
    deadline = time.monotonic() + seconds
    report_progress(0.0, "stubborn")
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except KeyboardInterrupt:
            continue
    return "ignored"
