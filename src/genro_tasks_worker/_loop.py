"""The worker process's main loop (stdlib only: never imports trio).

A worker reads one :class:`~._protocol.Job` at a time from its job pipe (through
the shared :class:`~._protocol.Framer`), says ``Started`` before it even
unpickles the job, runs it, and answers with exactly one ``Done*`` message,
never one over ``max_message_size`` (:func:`~._protocol.encode_within`).

The parent may send a worker its next jobs while the current one runs
(pipelining), so the worker starts each the moment the one before ends: when a
job ends, the worker sends its Done, cleans up after it, then takes the next
job's ticket if it is there and announces that job (Started). Such a
job comes with a *ticket* on a separate pipe both sides can read: before it
starts a ticketed job the worker takes that job's ticket, and the parent takes
a ticket back to cancel a job that has not started. A pipe read is atomic, so
exactly one side gets each ticket: a job whose ticket the parent took back is
skipped, never started (:func:`_take_ticket`).
It exits when the job pipe reaches end-of-file (the parent closed it), and
kills itself and everything it spawned the moment the parent process dies
(end-of-file on the shared *alive* pipe), even while a job is busy.

A graceful cancel (SIGTERM) interrupts only the job's own code: while the
worker's code runs (unpickling the job, importing trio, writing a frame) the
request is kept, and delivered as soon as the job's code runs again. A process
the job forks never speaks on the protocol and exits when it leaves the job.
"""

from __future__ import annotations

import inspect
import os
import pickle
import signal
import struct
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine
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

#: A cancel request on the cancel pipe, or a ticket on the ticket pipe: the task's sequence number.
_SEQ = struct.Struct("<Q")


def _take_ticket(fd: int) -> int | None:
    """Take the oldest ticket waiting on the ticket pipe (never blocks); None if there is none.

    The parent writes a job's ticket before the job itself, and takes a
    ticket back only for a job that has not started: when the worker has
    read job J and finds no ticket, or a later job's, J's ticket was taken
    back, and J must not start.
    """
    if fd < 0:
        return None
    try:
        data = os.read(fd, _SEQ.size)
    except (BlockingIOError, InterruptedError):
        return None
    if len(data) != _SEQ.size:  # pragma: no cover - tickets are written whole (8 bytes < PIPE_BUF)
        raise ProtocolError(f"a ticket of {len(data)} bytes")
    seq: int = _SEQ.unpack(data)[0]
    return seq


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
        """Write ``msg`` (in one write if it is small); lock held."""
        header, body = encode(msg)
        if len(body) > self.max_message_size:
            header, body = encode_within(msg, self.max_message_size)
        # From the job's thread, a graceful-cancel request waits until the frame is whole.
        interrupt = _disarm() if threading.get_ident() == _MAIN_THREAD else None
        try:
            if len(body) < SPLIT_WRITE:
                _write_all(self.fd, header + body)
            else:
                _write_all(self.fd, header)
                _write_all(self.fd, body)
        finally:
            if interrupt is not None:
                _arm(interrupt)

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
    """``module.QualName`` of ``obj`` (a class) or of its type, calling nothing they override."""
    cls = obj if issubclass(type(obj), type) else type(obj)
    try:
        module = type.__dict__["__module__"].__get__(cls)
        qualname = type.__dict__["__qualname__"].__get__(cls)
    except BaseException:  # pragma: no cover - a type without names
        return "<unnamed type>"
    if type(qualname) is not str:  # pragma: no cover - see above
        return "<unnamed type>"
    return qualname if module == "builtins" or type(module) is not str else f"{module}.{qualname}"


def _text(describe: Callable[[], object], fallback: str) -> str:
    """``describe()`` if it gives a string; ``fallback`` if it fails in any way (even SystemExit)."""
    try:
        text = describe()
        if isinstance(text, str):
            return str.__str__(text)  # a plain str, even from a subclass
    except BaseException:  # the description is user code: it may raise anything
        pass
    return fallback


def _describe(exc: BaseException) -> str:
    """``"Type: message"`` for ``exc``, best effort."""
    name = _type_name(exc)
    return f"{name}: {_text(lambda: str(exc), f'<str() of {name} failed>')}"


def _failure(exc: BaseException) -> Failure:
    """Describe ``exc``: pickled with its remote traceback and causes, plus a text fallback.

    Never raises: an exception whose formatting or pickling raises (even a
    BaseException) is described as well as it can be, so it fails its task
    instead of the worker.
    """
    name = _type_name(exc)
    message = _text(lambda: str(exc), f"<str() of {name} failed>")

    tb_text = _text(lambda: "".join(traceback.format_exception(exc)), "")
    if not tb_text:  # formatting called the exception's own code, which raised: frames only
        frames = _text(lambda: "".join(traceback.format_tb(exc.__traceback__)), "")
        tb_text = f"Traceback (most recent call last):\n{frames}{name}: {message}\n"
    exc_bytes: bytes | None
    try:
        from tblib import pickling_support

        pickling_support.install(exc)
        exc_bytes = pickle.dumps(exc, PICKLE_PROTOCOL)
    except BaseException:  # pickling is user code too (__reduce__)
        exc_bytes = None
    return Failure(exc_bytes, name, message, tb_text)


_MAIN_THREAD = threading.get_ident()
_WORKER_PID = os.getpid()

#: This worker's sender (fault-injection tests write raw bytes through ``_SENDER.fd``).
_SENDER: _Sender | None = None


class _JobState:
    """What the SIGTERM handler needs to know about the job in progress.

    One mechanism decides when a graceful cancel may interrupt: ``interrupt``
    is set (armed) only while the job's own code runs, and says how to
    interrupt it (raise :class:`CancelRequested`, or cancel the job's trio
    scope). Whenever the worker's own code runs in the job's window (from
    STARTED through unpickling, importing trio, writing a frame) it is None,
    and a request is kept in ``pending`` until the job's code is armed again.
    """

    #: From just before STARTED until the job returned or raised.
    in_job = False
    #: Sequence number of the task in progress (the parent names it in cancel requests).
    seq = 0
    #: Read end of the pipe the parent writes cancel requests on (-1: none, or a forked child).
    cancel_fd = -1
    interrupt: Callable[[], None] | None = None
    pending = False


def _raise_cancel() -> None:
    _JobState.interrupt = None  # one CancelRequested per request: the job's cleanup is not cut
    raise CancelRequested("the task was cancelled; clean up and return")


def _arm(interrupt: Callable[[], None], deliver: Callable[[], None] | None = None) -> None:
    """The job's code runs from here: deliver a request kept meanwhile, then any new one at once.

    ``deliver`` (default: ``interrupt``) delivers the kept request from this thread.
    """
    _JobState.interrupt = interrupt
    if _JobState.pending:
        _JobState.pending = False
        (deliver or interrupt)()


def _disarm() -> Callable[[], None] | None:
    """The worker's code runs from here: keep requests for later; return what was armed."""
    interrupt = _JobState.interrupt
    _JobState.interrupt = None
    return interrupt


def _cancel_request() -> bool | None:
    """Read what the parent wrote on the cancel pipe: is the running job asked to stop?

    Returns None when nothing was written (the SIGTERM did not come from the
    parent), True when the running job is asked to stop, False for requests
    about jobs that have already ended.
    """
    fd = _JobState.cancel_fd
    if fd < 0:
        return None
    try:
        data = os.read(fd, 4096)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:  # pragma: no cover - closed under us
        return None
    seqs = {seq for (seq,) in _SEQ.iter_unpack(data[: len(data) - len(data) % _SEQ.size])}
    return _JobState.in_job and _JobState.seq in seqs


def _die_of(signum: int) -> None:
    """Die of ``signum`` as an unmanaged process would: the parent reads it as a crash naming it."""
    signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)


def _on_sigterm(signum: int, frame: object) -> None:
    """Graceful cancel: interrupt the running job (never the worker's own code).

    The parent asks by writing the task's sequence number on the cancel pipe
    before it signals; a SIGTERM with nothing on that pipe came from someone
    else (an operator, a supervisor such as systemd), and the worker dies of it.
    """
    request = _cancel_request()
    if request is None:
        _die_of(signum)
        return  # pragma: no cover - the signal ends the process
    if not request:
        return  # a request for a job that has already ended
    interrupt = _JobState.interrupt
    if interrupt is None:
        _JobState.pending = True
    else:
        interrupt()


def _call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call the job; if that gives a coroutine (``async def`` function, async callable
    object, partial of one), run it under ``trio.run`` (imported only then)."""
    _arm(_raise_cancel)
    try:
        value = func(*args, **kwargs)
    finally:
        _disarm()
    if not inspect.iscoroutine(value):
        return value
    return _run_coroutine(value)


def _run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import trio  # disarmed: a cancel request waits until the job's scope exists
    except BaseException:
        coro.close()
        raise

    async def runner() -> Any:
        with trio.CancelScope() as scope:
            token = trio.lowlevel.current_trio_token()
            _arm(lambda: token.run_sync_soon(scope.cancel), scope.cancel)
            try:
                return await coro
            finally:
                _disarm()
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


def _flush_std_streams() -> None:
    """Flush sys.stdout and sys.stderr, whatever they are now (a job may have replaced them: never raises)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:  # the job's stream object: even SystemExit from it must not end the worker
            pass


def _in_forked_child() -> None:
    """Runs in any process forked from this worker: it must never speak for a task."""
    _progress.end_job()
    fd, _JobState.cancel_fd = _JobState.cancel_fd, -1  # a SIGTERM here is never the parent's request
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:  # pragma: no cover - already closed
            pass
    sender = _SENDER
    if sender is not None:
        fd, sender.fd = sender.fd, -1  # a write now fails instead of reaching the parent
        try:
            os.close(fd)
        except OSError:  # pragma: no cover - already closed
            pass


def _leave_if_forked(code: int) -> None:
    """A forked child of the job that leaves the job exits here, silently."""
    if os.getpid() != _WORKER_PID:
        _flush_std_streams()
        os._exit(code)


def _begin(seq: int) -> Started:
    """From here a graceful-cancel request names job ``seq`` (one that arrived before was for an earlier one)."""
    _JobState.pending = False
    _JobState.seq = seq
    _JobState.in_job = True
    return Started(seq)


def _run_job(
    sender: _Sender,
    channel: _progress.ProgressChannel,
    seq: int,
    payload: bytes | bytearray,
    announced: bool = False,
    ticket_fd: int = -1,
    held: int | None = None,
    look_ahead: bool = False,
) -> int | None:
    """Run job ``seq`` and send its Done; return the job this worker holds next and has announced, if any.

    ``announced``: its Started went out already, after the Done of the job
    before it. Once this job's Done has left and the clean-up after this job
    is done, if the parent has sent the next job ahead (its ticket is there,
    or ``held``: a ticket taken already, while skipping a job taken back),
    that job's ticket is taken (the worker is committed to start it) and its
    Started leaves at once. The ticket pipe is looked at only with
    ``look_ahead`` (this job was itself sent ahead): a job sent to an idle
    worker sends its Done without that extra read (the round trip's path).
    """
    if not announced:
        sender.send(_begin(seq))
    _progress.start_job(channel, seq)
    limits: tuple[int, int] | None = None
    try:
        try:
            try:
                func, args, kwargs, memory_limit = pickle.loads(payload)
                del payload
                if memory_limit is not None:
                    limits = _limit_memory(memory_limit)
                value: Any = _call(func, args, kwargs)
            except SystemExit as exc:
                _leave_if_forked(exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1)
                raise
            except BaseException:
                _leave_if_forked(1)
                raise
            _leave_if_forked(0)
        finally:
            _JobState.in_job = False
            _restore_memory(limits)
            _end_job_signals()
    except BaseException as exc:  # SystemExit and KeyboardInterrupt fail the task too
        _progress.end_job()
        done: WorkerMessage = DoneError(seq, _failure(exc))
        del exc
    else:
        _progress.end_job()
        try:
            done = DoneOk(seq, pickle.dumps(value, PICKLE_PROTOCOL))
        except BaseException as exc:
            done = DoneBadResult(seq, _type_name(value), _describe(exc))
        del value
    _flush_std_streams()  # what the job printed comes out before its result
    # The hygiene runs after the result left (nothing the job left can hold it back), while the
    # parent records it and sends the next job: off the round trip's path, and still before the
    # next job is taken on and announced (from then on the parent may ask that job to stop with
    # SIGTERM, and the worker's own signal handling must be back in place to hear it).
    _send_done(sender, channel, done)
    del done
    _clean_up_after_job()
    following = held if held is not None or not look_ahead else _take_ticket(ticket_fd)
    if following is not None:
        sender.send(_begin(following))
    return following


def _send_done(sender: _Sender, channel: _progress.ProgressChannel, done: WorkerMessage) -> None:
    """Send the job's last progress, then its Done."""
    with sender.lock:
        channel.finish_locked()
        sender.send_locked(done)


def _end_job_signals() -> None:
    """Put the worker's signal handling back the moment the job's code is over (timers, handlers, mask).

    Before the worker's own code handles the job's result: a timer the job left ticking, or its
    handlers, must not run in the worker's code. A handler of the job that raises meanwhile fails the
    job with its exception; the reset still completes.
    """
    error: BaseException | None = None
    for _ in range(3):  # (the first pass disarms the timers: a second one is left in peace)
        try:
            _hygiene.reset_signals()
            break
        except BaseException as exc:  # the job's handler ran: its exception, not the worker's
            error = error or exc
    if error is not None:
        raise error


def _clean_up_after_job() -> None:
    """Undo what the last job left behind: closed std streams, processes (its signal handling is undone already)."""
    _hygiene.restore_std_streams()
    if _hygiene.kill_leftovers():  # after the signal reset: a SIGCHLD the job ignores would hide its children
        _hygiene.forget_multiprocessing_helpers()  # a forkserver or tracker the job started is gone


def _own_signals() -> None:
    """Install the signal handling the worker relies on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, _on_sigterm)  # graceful cancel
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


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
    cancel_conn: Connection | None = None,
    ticket_conn: Connection | None = None,
) -> None:
    """Entry point of a worker process (the target given to ``multiprocessing``).

    Never returns: when the parent closes the job pipe the worker flushes its
    standard streams and exits at once, without waiting for threads a job
    left behind.

    Args:
        job_conn: Read end of the pipe the parent sends JOB frames on.
        result_conn: Write end of the pipe this worker answers on.
        alive_conn: Read end of a pipe whose write end only the parent holds.
        init_payload: Pickled ``(initializer, initargs)``, called before the
            worker says READY (unpickled here, after ``__main__`` is set up).
        main_ref: Where the parent's main module lives, imported lazily.
        max_message_size: Largest job this worker accepts and largest
            message it sends (see :func:`~._protocol.encode_within`).
        cancel_conn: Read end of the pipe the parent names a task on before
            it sends SIGTERM to cancel that task gracefully.
        ticket_conn: Read end of the ticket pipe (see :func:`_take_ticket`);
            None: every job runs (no ticket is asked for).
    """
    conns = [job_conn, result_conn, alive_conn] + [c for c in (cancel_conn, ticket_conn) if c is not None]
    _hygiene.close_inherited_fds([conn.fileno() for conn in conns])
    job_fd, result_fd, alive_fd = (_take_fd(conn) for conn in (job_conn, result_conn, alive_conn))
    if cancel_conn is not None:
        _JobState.cancel_fd = _take_fd(cancel_conn)
        os.set_blocking(_JobState.cancel_fd, False)
    ticket_fd = -1
    if ticket_conn is not None:
        ticket_fd = _take_fd(ticket_conn)
        os.set_blocking(ticket_fd, False)
    try:
        os.setpgid(0, 0)  # our own process group: a kill reaches what the job spawned
    except OSError:  # pragma: no cover - already a group or session leader
        pass
    _own_signals()
    watchdog = threading.Thread(target=_die_with_parent, args=(alive_fd,), name="genro-tasks-watchdog", daemon=True)
    watchdog.start()
    _progress.worker_thread(watchdog)
    global _MAIN_THREAD, _WORKER_PID
    _MAIN_THREAD = threading.get_ident()
    _WORKER_PID = os.getpid()
    _hygiene.setup()
    sender = _Sender(result_fd, max_message_size)
    global _SENDER
    _SENDER = sender
    os.register_at_fork(after_in_child=_in_forked_child)
    _main_module.install(main_ref)
    if init_payload is not None:
        try:
            initializer, initargs = pickle.loads(init_payload)
            initializer(*initargs)
        except BaseException as exc:
            sender.send(InitFailed(os.getpid(), _failure(exc)))
            os._exit(3)
        _own_signals()  # the initializer's other handlers stay: they are the worker's setup
    _hygiene.save_signals(disarm=True)  # every job starts with this; restored after each one
    channel = _progress.ProgressChannel(sender.send_locked, sender.lock, max_message_size)
    sender.send(Ready(os.getpid()))
    jobs = _JobReader(job_fd, max_message_size)
    ticket: int | None = None  # a ticket taken ahead, for a job further down the job pipe
    announced: int | None = None  # the job of that ticket, whose Started went out already
    while True:
        job = jobs.next_job()
        if job is None:
            if announced is not None:  # pragma: no cover - the parent closes the pipe only when we are idle
                raise ProtocolError(f"job pipe closed before job #{announced}, which was announced as started")
            _flush_std_streams()
            os._exit(0)  # not a return: multiprocessing would join the job's leftover threads forever
        if job.ticketed:
            if ticket is None:
                ticket = _take_ticket(ticket_fd)
            if ticket != job.seq:
                continue  # the parent took this job back before it started: skip it
            ticket = None
        elif announced is not None:  # pragma: no cover - a job for an idle worker while we hold one
            raise ProtocolError(f"job #{job.seq} sent while job #{announced} was announced as started")
        # A ticket still held here was taken for a later job, while skipping one taken back.
        ticket = _run_job(sender, channel, job.seq, job.payload, job.seq == announced, ticket_fd, ticket, job.ticketed)
        announced = ticket
