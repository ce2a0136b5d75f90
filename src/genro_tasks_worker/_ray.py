"""The job side of the Ray backend: what runs inside a Ray worker (stdlib only).

:func:`run_job` is what the parent's :class:`~genro_tasks.ray.RayBackend`
submits as a Ray task, bound to its tracker by :func:`job_function` (this module
never imports ray or trio). Its first action
is to tell the manager that the job has started, on a TCP connection the Ray
worker process keeps open to the manager's *tracker* (one connection per worker
process and manager, opened on its first job): a ``Started`` frame costs a
``send``, far less than a call to a Ray actor. The same connection carries the
job's :func:`~genro_tasks_worker.report_progress` updates (coalesced by the
usual :class:`~._progress.ProgressChannel`), and its end-of-file tells the
manager that the worker process is dead. The job's end travels back as the Ray
task's return value, made only of types Ray serialises without pickle (its
msgpack path is several times cheaper than pickling a class, on both sides):
``[pid, result, None, latest]`` with the pickled result, or ``[pid, None, end,
latest]`` where ``end`` is a pickled ``DoneError`` or ``DoneBadResult``, the same
named messages a process worker sends, so the parent decodes both alike.

Frames are the protocol's (:mod:`._protocol`): the connection opens with the
manager's secret token, then ``Ready(pid)``; then ``Started`` and ``Progress``
frames.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from . import _progress
from ._loop import _call, _describe, _failure, _type_name
from ._protocol import (
    PICKLE_PROTOCOL,
    DoneBadResult,
    DoneError,
    Progress,
    Ready,
    Started,
    WorkerMessage,
    encode,
    encode_within,
)

#: Largest progress frame sent to the tracker (its reader accepts no more).
TRACKER_MAX_MESSAGE: int = 1 << 20
#: Bytes of the token a connection opens with.
TOKEN_SIZE: int = 16
#: Bytes of the host identity that follows the token.
HOST_ID_SIZE: int = 32


def host_id() -> bytes:
    """Who can see this process's pids: the same machine (boot id) and pid namespace give the same value."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            boot = f.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: never taken for the manager's machine
        return os.urandom(HOST_ID_SIZE)
    return hashlib.sha256(boot + b":%d" % namespace).digest()


_Update = tuple[float | None, str | None]


class _Channel(_progress.ProgressChannel):
    """The usual coalescing channel, which also remembers the job's newest progress.

    The newest value travels back with the result too: the result (through
    Ray) may overtake the last progress frame (through the tracker's socket).
    """

    latest: _Update | None = None

    def begin(self, seq: int) -> None:
        self.latest = None
        super().begin(seq)

    def update(self, seq: int, update: _Update) -> None:
        with self._lock:
            if seq == self.seq:
                old = self.latest
                if old is not None:
                    update = (old[0] if update[0] is None else update[0], old[1] if update[1] is None else update[1])
                self.latest = update
        super().update(seq, update)


class _Tracker:
    """This process's connection to one manager's tracker, and the progress channel on it."""

    def __init__(self, host: str, port: int, token: bytes) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lock = threading.Lock()
        header, body = encode(Ready(os.getpid()))
        self.sock.sendall(token + host_id() + header + body)
        self.channel = _Channel(self.send_locked, self.lock, TRACKER_MAX_MESSAGE)

    def send_locked(self, msg: WorkerMessage) -> None:
        header, body = encode_within(msg, TRACKER_MAX_MESSAGE) if isinstance(msg, Progress) else encode(msg)
        try:
            self.sock.sendall(header + body)
        except OSError:
            pass  # the manager is gone: Ray ends this job's driver, and with it the job

    def started(self, seq: int) -> None:
        with self.lock:
            self.send_locked(Started(seq))


#: (host, port, token) -> this process's connection to that tracker.
_trackers: dict[tuple[str, int, bytes], _Tracker] = {}


def _close_in_child() -> None:
    """A process forked by a job must not hold the trackers' sockets (their end-of-file means death)."""
    for tracker in _trackers.values():
        try:
            tracker.sock.close()
        except OSError:  # pragma: no cover - already closed
            pass
    _trackers.clear()
    _progress.end_job()


os.register_at_fork(after_in_child=_close_in_child)


#: What :func:`run_job` returns, a list (Ray's msgpack path takes it as is, and a tuple costs it more):
#: ``[pid, pickled result or None, pickled other end or None, newest progress or None]``.
JobEnd = list[Any]

#: The job's key, ahead of the pickled call in the one argument of a task.
SEQ = struct.Struct("<q")


def job_argument(seq: int, payload: bytes) -> bytes:
    """The one argument of job ``seq``'s Ray task: its key, then its pickled call."""
    return SEQ.pack(seq) + payload


def job_function(tracker_address: tuple[str, int, bytes]) -> Callable[[bytes], JobEnd]:
    """The function a manager submits as its Ray tasks: :func:`run_job` bound to its tracker.

    Ray exports the function (with the tracker's address) once, when the first
    task is submitted; each task then carries one bytes argument,
    :func:`job_argument` (every argument costs Ray a serialisation in the
    manager and one in the worker).
    """

    def run(job: bytes) -> JobEnd:
        return run_job(tracker_address, job)

    return run


def run_job(tracker_address: tuple[str, int, bytes], job: bytes) -> JobEnd:
    """Run one job on a Ray worker: say it started, run it, return how it ended.

    Args:
        tracker_address: The tracker's host (the manager's machine, as Ray
            sees it), TCP port, and the manager's secret token (a connection
            that does not open with it is dropped).
        job: The job's key (the manager's sequence number of the task), then
            the pickled ``(func, args, kwargs, memory_limit)``: see
            :func:`job_argument`.

    Returns:
        This process's pid; the result pickled, or None; None, or a pickled
        ``DoneError`` (with the job's traceback, tblib) or ``DoneBadResult``;
        and the job's newest progress (None if it reported none).
    """
    (seq,) = SEQ.unpack_from(job)
    tracker = _trackers.get(tracker_address)
    if tracker is None:
        tracker = _trackers[tracker_address] = _Tracker(*tracker_address)
    tracker.started(seq)
    channel = tracker.channel
    _progress.start_job(channel, seq)
    result: bytes | None = None
    end: WorkerMessage | None = None
    try:
        func, args, kwargs, _memory_limit = pickle.loads(memoryview(job)[SEQ.size :])
        del job
        value: Any = _call(func, args, kwargs)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt fail the task too
        _progress.end_job()
        end = DoneError(seq, _failure(exc))
        del exc
    else:
        _progress.end_job()
        try:
            result = pickle.dumps(value, PICKLE_PROTOCOL)
        except BaseException as exc:
            end = DoneBadResult(seq, _type_name(value), _describe(exc))
        del value
    with tracker.lock:
        channel.finish_locked()
    return [os.getpid(), result, None if end is None else pickle.dumps(end, PICKLE_PROTOCOL), channel.latest]
