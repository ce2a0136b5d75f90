"""Keeping a worker clean between jobs (stdlib only).

* Processes a job leaves behind are killed when the job ends. The worker is a
  *child subreaper* (Linux), so even double-forked descendants become its
  children once their parent exits, and it can find and reap them.
* File descriptors 0-2, and ``sys.stdout``/``sys.stderr``, are restored if a
  job closed them, so the next job can still print.
"""

from __future__ import annotations

import ctypes
import fcntl
import io
import os
import signal
import sys

_PR_SET_CHILD_SUBREAPER = 36
_saved_std: list[int] = []
_subreaper = False


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
    """Reopen fds 0-2 and sys.stdout/stderr if the job closed them."""
    for fd in (0, 1, 2):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)  # the cheapest "is this fd open?"
        except OSError:
            if len(_saved_std) == 3:
                os.dup2(_saved_std[fd], fd)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if stream is None or stream.closed:
            setattr(sys, name, io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), line_buffering=True))
