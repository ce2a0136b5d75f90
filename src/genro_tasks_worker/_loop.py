"""The worker process's main loop (stdlib only: never imports trio).

A worker reads one :class:`~._protocol.Job` at a time from its job pipe (through
the shared :class:`~._protocol.Framer`), says ``Started`` before it even
unpickles the job, runs it, and answers with exactly one ``Done*`` message,
never one over ``max_message_size`` (:func:`~._protocol.encode_within`).
It exits when the job pipe reaches end-of-file (the parent closed it), and
kills itself and everything it spawned the moment the parent process dies
(end-of-file on the shared *alive* pipe), even while a job is busy.
"""

from __future__ import annotations

import inspect
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from . import _hygiene, _main_module, _progress
from ._framing import Framer
from ._protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    JOB_KINDS,
    PICKLE_PROTOCOL,
    SPLIT_WRITE,
    CancelRequested,
    DoneBadResult,
    DoneError,
    DoneOk,
    Failure,
    InitFailed,
    Job,
    Message,
    ProtocolError,
    Ready,
    Started,
    WorkerMessage,
    encode,
    encode_within,
)


class _JobReader:
    """Reads Job messages from the job pipe through the shared Framer (blocking reads)."""

    def __init__(self, fd: int, max_message_size: int) -> None:
        self.fd = fd
        self.framer = Framer(JOB_KINDS, max_message_size)
        self.buffer = self.framer.buffer()
        self.ready: list[Message] = []

    def next_job(self) -> Job | None:
        """Return the next job, or None at a clean end-of-file."""
        framer = self.framer
        while not self.ready:
            n = os.readv(self.fd, [self.buffer])
            if n == 0:
                if framer.idle:
                    return None
                raise ProtocolError("job pipe closed inside a frame")
            self.buffer = framer.received(n, self.ready)
        job = self.ready.pop(0)
        assert isinstance(job, Job)  # the framer accepts JOB frames only
        return job


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Sender:
    """Serialises frame writes from the job thread and the progress flusher."""

    def __init__(self, fd: int, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.max_message_size = max_message_size

    def send_locked(self, msg: WorkerMessage) -> None:
        header, body = encode(msg)
        if len(body) > self.max_message_size:
            header, body = encode_within(msg, self.max_message_size)
        in_main = threading.get_ident() == _MAIN_THREAD
        if in_main:
            _JobState.writing = True  # a graceful-cancel request now waits for the frame to be whole
        try:
            if len(body) < SPLIT_WRITE:
                _write_all(self.fd, header + body)
            else:
                _write_all(self.fd, header)
                _write_all(self.fd, body)
        finally:
            if in_main:
                _JobState.writing = False
                if _JobState.deferred and _JobState.in_job:
                    _JobState.deferred = False
                    _JobState.in_job = False
                    raise CancelRequested("the task was cancelled; clean up and return")

    def send(self, msg: WorkerMessage) -> None:
        with self.lock:
            self.send_locked(msg)


def _die_with_parent(alive_fd: int) -> None:
    """Block until the parent is gone, then kill this worker's process group."""
    while True:
        try:
            if not os.read(alive_fd, 1):
                break
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        except OSError:
            break
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    finally:  # pragma: no cover - killpg above kills us first
        os._exit(70)


def _type_name(obj: object) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _failure(exc: BaseException) -> Failure:
    """Describe ``exc``: pickled with its remote traceback and causes, plus a text fallback."""
    tb_text = "".join(traceback.format_exception(exc))
    try:
        from tblib import pickling_support

        pickling_support.install(exc)
        exc_bytes: bytes | None = pickle.dumps(exc, PICKLE_PROTOCOL)
    except Exception:
        exc_bytes = None
    try:
        message = str(exc)
    except Exception:
        message = f"<str() of {_type_name(exc)} failed>"
    return Failure(exc_bytes, _type_name(exc), message, tb_text)


_MAIN_THREAD = threading.get_ident()

#: This worker's sender (fault-injection tests write raw bytes through ``_SENDER.fd``).
_SENDER: _Sender | None = None


class _JobState:
    """What the SIGTERM handler needs to know about the job in progress."""

    in_job = False
    trio_cancel: Callable[[], None] | None = None
    #: The main thread is writing a frame: a SIGTERM must not cut it in half.
    writing = False
    #: A SIGTERM arrived during such a write; raised once the frame is out.
    deferred = False


def _on_sigterm(signum: int, frame: object) -> None:
    """Graceful cancel: interrupt the running job (never the worker's own code)."""
    if not _JobState.in_job:
        return
    cancel = _JobState.trio_cancel
    if cancel is not None:
        cancel()
        return
    if _JobState.writing:
        _JobState.deferred = True
        return
    _JobState.in_job = False
    raise CancelRequested("the task was cancelled; clean up and return")


def _call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call the job; ``async def`` jobs run under ``trio.run`` (imported only then)."""
    if not inspect.iscoroutinefunction(func):
        return func(*args, **kwargs)
    import trio

    async def runner() -> Any:
        with trio.CancelScope() as scope:
            token = trio.lowlevel.current_trio_token()
            _JobState.trio_cancel = lambda: token.run_sync_soon(scope.cancel)
            try:
                return await func(*args, **kwargs)
            finally:
                _JobState.trio_cancel = None
        raise CancelRequested("the task was cancelled; its trio scope was cancelled")

    return trio.run(runner)


def _limit_memory(extra: int) -> tuple[int, int] | None:
    """Cap the address space at its current size plus ``extra`` bytes."""
    import resource

    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - no /proc
        current = 0
    old = resource.getrlimit(resource.RLIMIT_AS)
    hard = old[1]
    limit = current + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return old


def _restore_memory(old: tuple[int, int] | None) -> None:
    if old is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, old)


def _run_job(sender: _Sender, channel: _progress.ProgressChannel, seq: int, payload: bytes | bytearray) -> None:
    sender.send(Started(seq))
    channel.begin(seq)
    _progress._activate(channel)
    limits: tuple[int, int] | None = None
    try:
        try:
            func, args, kwargs, memory_limit = pickle.loads(payload)
            del payload
            if memory_limit is not None:
                limits = _limit_memory(memory_limit)
            _JobState.deferred = False
            _JobState.in_job = True
            value: Any = _call(func, args, kwargs)
        finally:
            _JobState.in_job = False
            _restore_memory(limits)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt fail the task too
        _progress._activate(None)
        done: WorkerMessage = DoneError(seq, _failure(exc))
        del exc
    else:
        _progress._activate(None)
        try:
            done = DoneOk(seq, pickle.dumps(value, PICKLE_PROTOCOL))
        except BaseException as exc:
            done = DoneBadResult(seq, _type_name(value), f"{_type_name(exc)}: {exc}")
        del value
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    _hygiene.restore_std_streams()
    _hygiene.kill_leftovers()
    with sender.lock:
        channel.finish_locked()
        sender.send_locked(done)


def _take_fd(conn: Connection) -> int:
    """Own the descriptor behind ``conn`` as a plain fd."""
    fd = os.dup(conn.fileno())
    conn.close()
    return fd


def main(
    job_conn: Connection,
    result_conn: Connection,
    alive_conn: Connection,
    init_payload: bytes | None = None,
    main_ref: tuple[str, str] | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> None:
    """Entry point of a worker process (the target given to ``multiprocessing``).

    Args:
        job_conn: Read end of the pipe the parent sends JOB frames on.
        result_conn: Write end of the pipe this worker answers on.
        alive_conn: Read end of a pipe whose write end only the parent holds.
        init_payload: Pickled ``(initializer, initargs)``, called before the
            worker says READY (unpickled here, after ``__main__`` is set up).
        main_ref: Where the parent's main module lives, imported lazily.
        max_message_size: Largest job this worker accepts and largest
            message it sends (see :func:`~._protocol.encode_within`).
    """
    job_fd, result_fd, alive_fd = (_take_fd(conn) for conn in (job_conn, result_conn, alive_conn))
    try:
        os.setpgid(0, 0)  # our own process group: a kill reaches what the job spawned
    except OSError:  # pragma: no cover - already a group or session leader
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    threading.Thread(target=_die_with_parent, args=(alive_fd,), name="genro-tasks-watchdog", daemon=True).start()
    global _MAIN_THREAD
    _MAIN_THREAD = threading.get_ident()
    signal.signal(signal.SIGTERM, _on_sigterm)
    _hygiene.setup()
    sender = _Sender(result_fd, max_message_size)
    global _SENDER
    _SENDER = sender
    _main_module.install(main_ref)
    if init_payload is not None:
        try:
            initializer, initargs = pickle.loads(init_payload)
            initializer(*initargs)
        except BaseException as exc:
            sender.send(InitFailed(os.getpid(), _failure(exc)))
            os._exit(3)
    channel = _progress.ProgressChannel(sender.send_locked, sender.lock, max_message_size)
    sender.send(Ready(os.getpid()))
    jobs = _JobReader(job_fd, max_message_size)
    while True:
        job = jobs.next_job()
        if job is None:
            return
        _run_job(sender, channel, job.seq, job.payload)
