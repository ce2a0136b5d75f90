"""Keeping a worker clean between jobs (stdlib only).

* Processes a job leaves behind are killed when the job ends (right after its
  result is sent, before the worker reads its next job). The worker is a
  *child subreaper* (Linux), so even double-forked descendants become its
  children once their parent exits, and it can find and reap them.
* File descriptors 0-2, and ``sys.stdout``/``sys.stderr``, are restored if a
  job closed them, so the next job can still print.
* Timers a job armed (``signal.alarm``, ``setitimer``) are disarmed, and the
  signal dispositions, signal mask and wakeup fd are put back as they were
  when the worker became ready (after its initializer), the moment the job's
  code returns, so a leftover timer or handler cannot kill or confuse the
  worker while it sends the job's result, nor during the next job.
* At start, the worker closes the descriptors it inherited but does not own
  (the forkserver's and the resource tracker's): a job cannot harm them.
"""

from __future__ import annotations

import ctypes
import fcntl
import importlib
import io
import os
import signal
import sys
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

_PR_SET_CHILD_SUBREAPER = 36
_saved_std: list[int] = []
_subreaper = False

_Handler = Callable[[int, FrameType | None], Any] | int | None
#: ``signal.getsignal`` without its enum conversion, which costs 20x more (this runs after every job).
_getsignal: Callable[[int], _Handler] = importlib.import_module("_signal").getsignal
_TIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)
_saved_handlers: dict[int, _Handler] = {}
_saved_pairs: tuple[tuple[int, _Handler], ...] = ()
_saved_mask: set[int] = set()
#: ``signal.pthread_sigmask`` without its enum conversion (a set of plain ints; this runs after every job).
_sigmask: Callable[[int, Iterable[int]], set[int]] = importlib.import_module("_signal").pthread_sigmask


def setup() -> None:
    """Call once at worker start."""
    global _subreaper
    _saved_std[:] = [os.dup(fd) for fd in (0, 1, 2)]
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):  # pragma: no cover - exotic libc
            _subreaper = False


def _children() -> list[int]:
    pids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/children", "rb") as f:
                    pids.extend(int(p) for p in f.read().split())
            except OSError:
                continue
    except OSError:  # pragma: no cover - no /proc
        return []
    return pids


def kill_leftovers() -> int:
    """Kill and reap every process the last job left running; return how many."""
    if not _subreaper:
        return 0
    try:  # the common case costs one syscall: no child at all
        if os.waitpid(-1, os.WNOHANG) == (0, 0):
            pass  # a child is still running: sweep below
    except ChildProcessError:
        return 0
    killed = 0
    for _ in range(100):  # each round adopts the next generation of orphans
        pids = _children()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
                killed += 1
            except ChildProcessError:
                pass
    return killed


def restore_std_streams() -> None:
    """Reopen fds 0-2 and sys.stdout/stderr if the job closed them (or left a stream that raises when asked)."""
    for fd in (0, 1, 2):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)  # the cheapest "is this fd open?"
        except OSError:
            if len(_saved_std) == 3:
                os.dup2(_saved_std[fd], fd)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        try:
            usable = stream is not None and not stream.closed
        except BaseException:  # the job's own stream object, which cannot even say: replace it too
            usable = False
        if not usable:
            setattr(sys, name, io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), line_buffering=True))


def close_inherited_fds(keep: Iterable[int]) -> None:
    """Close the descriptors a worker inherits but does not own; call once, first thing.

    A worker inherits descriptors it has no use for: the forkserver's alive
    pipe and the resource tracker's pipe (the same ones every other worker and
    the forkserver hold), and the pipe behind ``multiprocessing.parent_process()``.
    A job writing to them could take the forkserver or the tracker down. They
    are closed, and multiprocessing is told to forget them, so a job that uses
    ``multiprocessing`` (children, shared memory) starts its own forkserver or
    resource tracker as in any fresh process.

    A worker started by the forkserver keeps only 0-2 and ``keep``. A spawned
    worker closes the descriptors above and keeps the rest: one of them, which
    it cannot name, is the pipe its parent watches to see it exit.
    """
    from multiprocessing import forkserver, process, resource_tracker

    keep = set(keep)
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    server = getattr(forkserver, "_forkserver", None)
    parent = getattr(process, "_parent_process", None)
    known = [
        getattr(tracker, "_fd", None),
        getattr(server, "_forkserver_alive_fd", None),
        *(getattr(server, "_inherited_fds", None) or ()),
        getattr(parent, "_sentinel", None),
    ]
    if getattr(server, "_forkserver_alive_fd", None) is not None:  # forked by the forkserver
        low = 3
        for fd in sorted(keep):
            if fd >= low:
                os.closerange(low, fd)
                low = fd + 1
        os.closerange(low, max(os.sysconf("SC_OPEN_MAX"), low + 1))
    else:
        for fd in known:
            if isinstance(fd, int) and fd > 2 and fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
    forget_multiprocessing_helpers(close=False)
    process._parent_process = None  # type: ignore[attr-defined]  # its sentinel was one of them
    stdin = sys.stdin
    if stdin is not None:
        try:
            fd = stdin.fileno()
        except (OSError, ValueError):
            fd = -1
        if fd > 2 and fd not in keep:  # multiprocessing opened /dev/null for it: point it at fd 0
            sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - lives as long as the worker


def forget_multiprocessing_helpers(close: bool = True) -> None:
    """Make multiprocessing start a fresh forkserver and resource tracker when a job needs one.

    At worker start they are the parent's (their descriptors were just closed);
    after a job they are the job's, killed with its other leftovers. ``close``
    closes the descriptors multiprocessing kept to them.
    """
    from multiprocessing import forkserver, resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    server = getattr(forkserver, "_forkserver", None)
    fds = [getattr(tracker, "_fd", None), getattr(server, "_forkserver_alive_fd", None)]
    if tracker is not None:
        tracker._fd = tracker._pid = None
    if server is not None:
        server._forkserver_alive_fd = server._forkserver_pid = server._forkserver_address = None
        server._inherited_fds = None
    for fd in fds:
        if close and isinstance(fd, int):
            try:
                os.close(fd)
            except OSError:
                pass


def save_signals(disarm: bool = False) -> None:
    """Remember the signal dispositions and mask every job starts with.

    Args:
        disarm: Disarm the timers first (an initializer may have armed one).
    """
    if disarm:
        for which in _TIMERS:
            signal.setitimer(which, 0)
    _saved_handlers.clear()
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        handler = _getsignal(signum)
        if handler is not None:  # None: set outside Python, nothing we can restore
            _saved_handlers[signum] = handler
    global _saved_pairs
    _saved_pairs = tuple(_saved_handlers.items())
    _saved_mask.clear()
    _saved_mask.update(_sigmask(signal.SIG_BLOCK, ()))


def reset_signals() -> None:
    """Disarm the job's timers; restore the saved dispositions, mask and wakeup fd.

    Signals the job left pending while it blocked them are discarded, so
    unblocking them does not deliver a stale signal to the worker.
    """
    for which in _TIMERS:
        signal.setitimer(which, 0)
    signal.set_wakeup_fd(-1)
    getsignal = _getsignal
    changed = [signum for signum, handler in _saved_pairs if getsignal(signum) is not handler]
    blocked = _sigmask(signal.SIG_BLOCK, ())
    if blocked != _saved_mask:
        for signum in signal.sigpending() & (blocked - _saved_mask):
            if signum in _saved_handlers:
                signal.signal(signum, signal.SIG_IGN)  # ignoring a pending signal discards it
                changed.append(signum)
        signal.pthread_sigmask(signal.SIG_SETMASK, _saved_mask)
    for signum in changed:
        signal.signal(signum, _saved_handlers[signum])
