"""Job functions for tests/test_worker_hygiene.py (importable by name in the workers).

Each one does to its worker what a careless or hostile job might: fork, leave
timers, threads or signal handlers behind, raise exceptions that fight back.
"""

from __future__ import annotations

import importlib.abc
import os
import signal
import sys
import threading
import time
from typing import Any

from genro_tasks_worker import report_progress

# --- descriptors -------------------------------------------------------------


def open_fds() -> dict[int, str]:
    """Every descriptor this worker holds, with what it points to."""
    found: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return found


def use_multiprocessing() -> tuple[int, int | None]:
    """Shared memory and a child process of the job's own, as in any program."""
    import multiprocessing
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(create=True, size=16)
    assert shm.buf is not None
    try:
        shm.buf[0] = 7
        child = multiprocessing.get_context("forkserver").Process(target=os.getpid)
        child.start()
        child.join()
        return shm.buf[0], child.exitcode
    finally:
        shm.close()
        shm.unlink()


# --- fork ---------------------------------------------------------------------


def fork_and_leave(how: str) -> tuple[str, int]:
    """Fork; the child reports progress and leaves the job by returning or raising."""
    pid = os.fork()
    if pid == 0:  # the child: it must never answer for the task
        report_progress(0.5, "from the forked child")
        if how == "raise":
            raise RuntimeError("raised in the forked child")
        if how == "exit":
            sys.exit(0)
        return ("child", os.getpid())
    _, status = os.waitpid(pid, 0)  # returns once the child has left the job (and exited)
    return ("parent", os.waitstatus_to_exitcode(status))


# --- timers and signals -------------------------------------------------------

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGCHLD, signal.SIGPIPE, signal.SIGUSR1)
_TIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)


def signal_state() -> dict[str, Any]:
    """What a job finds: timers, dispositions, the signal mask and the wakeup fd."""
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    return {
        "timers": [signal.getitimer(which) for which in _TIMERS],
        "handlers": {signal.Signals(s).name: repr(signal.getsignal(s)) for s in _SIGNALS},
        "mask": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "wakeup_fd": wakeup,
    }


def leave_timers_and_signals() -> str:
    """Arm every timer, change dispositions and the mask, leave a signal pending; return."""
    signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.setitimer(signal.ITIMER_REAL, 600)
    signal.setitimer(signal.ITIMER_VIRTUAL, 600)
    signal.setitimer(signal.ITIMER_PROF, 600)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # pending: would kill the worker once unblocked
    _, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w)
    return "left a mess"


def _on_usr1(signum: int, frame: Any) -> None:
    pass


def init_with_signals() -> None:
    """An initializer that installs a handler, and also takes over SIGTERM and arms a timer."""
    signal.signal(signal.SIGUSR1, _on_usr1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.setitimer(signal.ITIMER_REAL, 600)


def arm_alarm(seconds: float) -> str:
    """Arm SIGALRM (default action: terminate) and return before it goes off."""
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return "armed"


def outlive_leftover_alarm() -> str:
    """Run until after any alarm a previous job left would have gone off."""
    remaining = signal.getitimer(signal.ITIMER_REAL)[0]
    time.sleep(remaining + 0.05 if remaining else 0)
    return "survived"


# --- threads ------------------------------------------------------------------


def leave_non_daemon_thread() -> int:
    """Start a non-daemon thread that never ends; return this worker's pid."""
    threading.Thread(target=threading.Event().wait, name="left-behind", daemon=False).start()
    return os.getpid()


#: How many report_progress() calls the leftover thread has completed (in this worker).
leftover_calls = 0


def _report_forever() -> None:
    global leftover_calls
    while True:
        report_progress(0.99, "from a thread a previous job left behind")
        leftover_calls += 1
        time.sleep(0.001)


def leave_progress_thread() -> str:
    """Leave a daemon thread that calls report_progress() forever."""
    threading.Thread(target=_report_forever, daemon=True).start()
    while leftover_calls == 0:  # it runs (and reports for this job) before we return
        time.sleep(0.001)
    return "left"


def progress_with_a_leftover_around() -> int:
    """Report from a thread of this job, then let the leftover thread report twice more."""
    own = threading.Thread(target=report_progress, args=(0.25, "from this job's thread"))
    own.start()
    own.join()
    start = leftover_calls
    while leftover_calls < start + 2:  # one whole call made after this job started
        time.sleep(0.001)
    return leftover_calls - start


# --- exceptions that fight back -----------------------------------------------


class HostileError(Exception):
    """Every way to describe or pickle it raises a BaseException."""

    def __str__(self) -> str:
        raise SystemExit("str() of HostileError")

    def __repr__(self) -> str:
        raise KeyboardInterrupt("repr() of HostileError")

    def __reduce__(self) -> Any:
        raise SystemExit("pickling HostileError")


class HostileExit(SystemExit):
    """A SystemExit whose message raises SystemExit."""

    def __str__(self) -> str:
        raise SystemExit("str() of HostileExit")


def raise_hostile(kind: str) -> None:
    if kind == "exit":
        raise HostileExit(3)
    raise HostileError("boom")


class HostileValue:
    """A result whose pickling raises an exception that cannot be described."""

    def __reduce__(self) -> Any:
        raise HostileError("cannot pickle")


def return_hostile() -> HostileValue:
    return HostileValue()


# --- graceful cancel windows --------------------------------------------------


def _wait_for_file(path: str) -> str:
    while not os.path.exists(path):
        time.sleep(0.005)
    return path


class WaitWhenUnpickled:
    """An argument whose unpickling, in the worker, waits until ``marker`` exists."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (_wait_for_file, (self.marker,))


def return_arg(value: Any) -> Any:
    report_progress(1.0, "the job ran")
    return value


class _SlowTrioImport(importlib.abc.MetaPathFinder):
    """Holds the import of one of trio's modules until a marker file exists (once)."""

    def __init__(self, module: str, marker: str) -> None:
        self.module = module
        self.marker = marker

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == self.module:
            sys.meta_path.remove(self)
            report_progress(0.0, "importing trio")
            _wait_for_file(self.marker)
        return None


def slow_down_trio_import(marker: str) -> bool:
    """Make this worker's next ``import trio`` stop half way until ``marker`` exists."""
    sys.meta_path.insert(0, _SlowTrioImport("trio._core._run", marker))
    return "trio" in sys.modules


async def async_triple(n: int) -> int:
    import trio.lowlevel

    await trio.lowlevel.checkpoint()
    return n * 3


class AsyncCallable:
    """An object whose ``__call__`` is ``async def``."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    async def __call__(self, n: int) -> int:
        import trio.lowlevel

        await trio.lowlevel.checkpoint()
        return n * self.factor
