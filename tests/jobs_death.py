"""Jobs for the worker-death tests (imported by worker processes)."""

from __future__ import annotations

import os
import time

from genro_tasks_worker import report_progress


def wait_for_path(path: str, limit: float = 60.0) -> str:
    """Block until ``path`` exists (the test's gate), then return its pid as text."""
    end = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return f"done in {os.getpid()}"


def leave_own_group_and_sleep() -> None:
    """Move this worker out of the process group it leads, keep a child in it, then hang."""
    keeper = os.fork()
    if keeper == 0:  # stays in the worker's original group
        time.sleep(3600)
        os._exit(0)
    ready_r, ready_w = os.pipe()
    other = os.fork()
    if other == 0:
        os.setpgid(0, 0)  # a group of its own
        os.write(ready_w, b"x")
        time.sleep(3600)
        os._exit(0)
    os.read(ready_r, 1)
    os.setpgid(0, other)  # the worker joins the other group: killpg(worker pid) no longer reaches it
    report_progress(message=f"{keeper} {other}")
    time.sleep(3600)


def die_by(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(10)


def exit_with(code: int) -> None:
    os._exit(code)


def init_exit_if_armed(directory: str) -> None:
    """An initializer that kills its own worker once the test arms it."""
    if os.path.exists(os.path.join(directory, "armed")):
        os._exit(7)


def init_one_fails_others_wait(directory: str) -> None:
    """Once armed: the first worker to start raises, the others wait for the test's gate."""
    if not os.path.exists(os.path.join(directory, "armed")):
        return
    try:
        os.close(os.open(os.path.join(directory, "won"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        wait_for_path(os.path.join(directory, "gate"))
        return
    raise RuntimeError("this worker's initializer fails on purpose")


def _refuse_to_load(kind: str) -> object:
    """Runs where the value is unpickled: in the parent, never in the worker."""
    if kind == "system-exit":
        raise SystemExit("unpickling this result exits")
    raise ValueError("this result cannot be loaded here")


class LoadsBadly:
    """Pickles fine in the worker; unpickling it in the parent raises."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[object, ...]:
        return (_refuse_to_load, (self.kind,))


def return_unloadable(kind: str) -> LoadsBadly:
    return LoadsBadly(kind)


def leave_non_daemon_thread() -> int:
    """Return, leaving a non-daemon thread that keeps the process from exiting normally."""
    import threading

    threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
    return os.getpid()


def init_report_pid_then_wait(directory: str) -> None:
    """Once armed: write this starting worker's pid to a file, then wait for the test's gate."""
    if not os.path.exists(os.path.join(directory, "armed")):
        return
    with open(os.path.join(directory, f"starting-{os.getpid()}"), "w") as f:
        f.write(str(os.getpid()))
    wait_for_path(os.path.join(directory, "gate"))
