"""Parent-side handle of one worker process: start, framed async pipes, kill.

The handle owns the write end of the worker's job pipe and the read end of
its result pipe (both non-blocking, waited on through trio), both ends of its
*ticket* pipe (a job's ticket is written before the job, and taken back to
cancel a job the worker has not started: see :meth:`WorkerProcess.take_back`), a *pidfd* of the
worker process, and multiprocessing's process sentinel. The worker's death is
observed through the pidfd: it is the worker's own, so neither the forkserver's
death nor a descendant holding an inherited descriptor can fake or hide it.
The sentinel only carries the exit status (the forkserver reports it there).
It knows nothing about tasks; :class:`~._process_backend.ProcessBackend` drives it.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import struct
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any

import trio

from genro_tasks_worker import _loop
from genro_tasks_worker._framing import Framer, HeaderCheck
from genro_tasks_worker._protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    INIT_FAILED,
    KIND_NAMES,
    READY,
    SPLIT_WRITE,
    WORKER_KINDS,
    Job,
    Message,
    ProtocolError,
    encode,
)

from ._errors import WorkerInitError
from ._launch import start_process

log = logging.getLogger("genro_tasks")

#: Pipe capacity asked of Linux (F_SETPIPE_SZ); fewer wake-ups for big payloads.
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: A job's ticket on the ticket pipe: its sequence number.
_TICKET = struct.Struct("<Q")


class WorkerState(enum.Enum):
    STARTING = "starting"  # process started, READY not yet received
    IDLE = "idle"
    BUSY = "busy"  # a job is assigned (not started until STARTED arrives)
    STOPPING = "stopping"  # job pipe closed: exits when its current job is done
    DYING = "dying"  # SIGKILL sent, waiting for the exit to be reaped
    DEAD = "dead"


class KillReason(enum.Enum):
    REQUESTED = "the scheduler asked (cancel, timeout or shutdown of its job)"
    SHUTDOWN = "the backend stopped"
    CRASH = "worker misbehaved"
    TOO_LARGE = "sent a message over max_message_size"
    STOP = "did not exit when told to stop"


def _enlarge_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:  # pragma: no cover - not Linux, or over /proc/sys/fs/pipe-max-size
        pass


class FrameReader:
    """Non-blocking reader of one worker's messages: a pipe feeding the shared Framer.

    One ``os.readv`` per call, straight into the framer's buffer: its
    persistent scratch for small frames, or the buffer of a large body,
    which grows as the body arrives.
    """

    __slots__ = ("_buffer", "drained", "fd", "framer", "reads")

    def __init__(self, fd: int, max_message_size: int, check_header: HeaderCheck | None = None) -> None:
        self.fd = fd
        self.framer = Framer(WORKER_KINDS, max_message_size, check_header)
        # Where the next read goes, as the framer said after it last took bytes:
        # a read that finds the pipe empty costs no call.
        self._buffer = self.framer.buffer()
        #: The last read took less than it asked for: the pipe was empty then (wait before reading again).
        self.drained = False
        #: Reads that took bytes (a worker writing a long message is seen making progress).
        self.reads = 0

    def read(self, messages: list[Message]) -> bool:
        """Read what the pipe holds now, appending whole messages to ``messages``.

        Returns False at end-of-file. Raises BlockingIOError when nothing
        was available, ProtocolError for a corrupt frame and FrameTooLarge
        (a ProtocolError) for a frame over ``max_message_size``.
        """
        buffer = self._buffer
        n = os.readv(self.fd, [buffer])
        if n == 0:
            return False
        self.drained = n < len(buffer)
        self.reads += 1
        self._buffer = self.framer.received(n, messages)
        return True


class WorkerProcess:
    """One worker process and the parent's ends of its pipes.

    Building one starts the process, which blocks for a few milliseconds:
    the backend builds them in a thread.
    """

    def __init__(
        self,
        ctx: BaseContext,
        alive_r: int,
        number: int,
        init_payload: bytes | None = None,
        main_ref: tuple[str, str] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        owns: Callable[[WorkerProcess, int], bool] | None = None,
    ) -> None:
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        cancel_r, cancel_w = os.pipe()
        ticket_r, ticket_w = os.pipe()
        _enlarge_pipe(job_w)
        _enlarge_pipe(res_w)
        child_ends = [
            multiprocessing.connection.Connection(job_r, writable=False),
            multiprocessing.connection.Connection(res_w, readable=False),
            multiprocessing.connection.Connection(os.dup(alive_r), writable=False),
            multiprocessing.connection.Connection(cancel_r, writable=False),
            multiprocessing.connection.Connection(os.dup(ticket_r), writable=False),
        ]
        self.number = number
        try:
            self.process: Any = start_process(
                ctx,
                _loop.main,
                (*child_ends[:3], init_payload, main_ref, max_message_size, *child_ends[3:]),
                f"genro-tasks-worker-{number}",
            )
        except BaseException:
            for fd in (job_w, res_r, cancel_w, ticket_r, ticket_w):
                os.close(fd)
            raise
        finally:
            for conn in child_ends:
                conn.close()
        self.pid: int = self.process.pid
        self.sentinel: int = self.process.sentinel
        self._via_forkserver = ctx.get_start_method() == "forkserver"
        #: The forkserver that reports this worker's exit status (its death loses the status).
        self._forkserver_fd = current_forkserver_pidfd() if self._via_forkserver else None
        #: Readable once the worker process itself has exited (None: not Linux, or already gone).
        self.pidfd: int | None = _open_pidfd(self.pid)
        os.set_blocking(job_w, False)
        os.set_blocking(res_r, False)
        os.set_blocking(cancel_w, False)
        os.set_blocking(ticket_r, False)  # the worker's end shares this open file: non-blocking too
        os.set_blocking(ticket_w, False)
        self._cancel_fd: int | None = cancel_w
        self._ticket_r: int | None = ticket_r
        self._ticket_w: int | None = ticket_w
        self.job_fd: int | None = job_w
        #: Asks the backend whether this worker runs job ``seq`` (the mapping is the backend's).
        self._owns = owns
        self.reader = FrameReader(res_r, max_message_size, self._check_header)
        self.state = WorkerState.STARTING
        self.ready = False
        #: Its exit was seen: what is left in its pipe is read, but it gets no new job.
        self.exited = False
        #: The jobs handed to it, oldest first: the current one, then at most one sent ahead.
        self.assigned: list[int] = []
        #: The payloads of its jobs not started yet (to grant one again after a take-back).
        self.payloads: dict[int, bytes] = {}
        #: Its current job (``assigned[0]``) reported STARTED, at this ``time.monotonic()``.
        self.started = False
        self.started_at = 0.0
        #: How many jobs it may hold behind the one it runs (see :data:`~._process_backend.HELD_BUDGET`).
        self.ahead = 1
        #: Jobs it said STARTED about after it was told to die (read from its pipe, not acted on).
        self.said_started: set[int] = set()
        #: Jobs whose tickets the parent took back: they never start.
        self.taken_back: set[int] = set()
        #: Jobs to kill the worker for as soon as one reports STARTED (their tickets could not be taken back).
        self.kill_on_start: set[int] = set()
        self.kill_reason: KillReason | None = None
        self.kill_detail = ""
        #: What it sent over max_message_size, and its size (KillReason.TOO_LARGE).
        self.oversize: tuple[str, int] = ("", 0)
        self.exitcode: int | None = None
        self.jobs_done = 0
        self.timer: trio.CancelScope | None = None
        #: Set when its job pipe is closed (STOPPING): kill at this trio time if still alive.
        self.stop_deadline = math.inf
        #: Jobs being killed that wait for what it owes them (a result arriving; a Done, or a STARTED,
        #: once it took its next ticket),
        #: the trio time to give up waiting (for those, or for the STARTED of a job it has to start next)
        #: unless bytes moved, and :meth:`traffic` then.
        self.owed: set[int] = set()
        self.owed_deadline = math.inf
        self.owed_traffic = 0
        #: Writes of queued job bytes that the pipe took once it had room (the worker is reading them).
        self.writes = 0
        #: Replaced already (max_tasks_per_worker): do not respawn on exit.
        self.retired = False
        #: Its initializer raised (reported INIT_FAILED) before it became ready.
        self.init_error: WorkerInitError | None = None
        #: The forkserver died before reporting this worker's exit status.
        self.status_lost = False
        self._out: list[memoryview] = []
        self._out_ready = trio.Event()
        #: Job frames and tickets kept for one write at the end of a pass (see :meth:`send_job`).
        self._deferred: list[bytes] = []
        self._deferred_tickets: list[bytes] = []

    def __repr__(self) -> str:
        return f"<worker {self.number} pid={self.pid} {self.state.value}>"

    def _check_header(self, kind: int, seq: int, length: int) -> None:
        """Refuse a frame about a task this worker does not run, before buffering its body."""
        own = self._owns
        mine = seq == self.pid if kind in (READY, INIT_FAILED) else own is not None and own(self, seq)
        if not mine:
            raise ProtocolError(f"a {KIND_NAMES[kind]} frame of {length:,} bytes about #{seq}, not this worker's")

    # --- receiving -----------------------------------------------------------
    def receive(self, messages: list[Message]) -> tuple[bool, ProtocolError | None] | None:
        """Append the whole messages the worker has sent so far to ``messages`` (never blocks).

        Returns None if nothing was there (wait for :attr:`reader`'s fd to be
        readable, then call again), else ``(alive, broken)``: ``alive`` is
        False at end-of-file; ``broken`` is the error of a corrupt or
        oversized frame (the messages before it are still appended). Never
        raises for the worker's faults.
        """
        try:
            return self.reader.read(messages), None
        except BlockingIOError:
            return None
        except ProtocolError as exc:
            return True, exc
        except MemoryError:
            # Bodies grow only as their bytes arrive: this is a message within
            # max_message_size that this process has no memory left for.
            return True, ProtocolError("its message is larger than the memory left to receive it")

    def leftovers(self) -> list[Message]:
        """The whole messages an exited worker left in its pipe (never blocks)."""
        messages: list[Message] = []
        for _ in range(1 << 16):
            try:
                if not self.reader.read(messages):
                    break
            except Exception:  # BlockingIOError at the end; anything else: stop reading
                break
        return messages

    # --- sending -------------------------------------------------------------
    def send_job(self, seq: int, payload: bytes, ticketed: bool, defer: bool = False) -> bool:
        """Queue a Job message (after its ticket, if ``ticketed``); writes at once what the pipe accepts (never blocks).

        A job for an idle worker needs no ticket: nothing runs before it, so
        it cannot be taken back (a cancel kills the worker). A job sent to a
        busy worker, or granted again, is ticketed.

        With ``defer``, a small job is kept until :meth:`flush`, so the jobs
        sent in one pass of the scheduler (and their tickets) leave in one
        write each. Returns True if this call left bytes for :meth:`flush`
        where there were none.
        """
        if ticketed:
            self.payloads[seq] = payload
        header, body = encode(Job(seq, payload, ticketed))
        if defer and len(body) < SPLIT_WRITE:
            fresh = not self._deferred
            if ticketed:
                self._deferred_tickets.append(_TICKET.pack(seq))
            self._deferred.append(header + body)
            return fresh
        if self._deferred:
            self.flush()
        if ticketed:
            self._write_tickets(_TICKET.pack(seq))
        if len(body) < SPLIT_WRITE:
            self._send(memoryview(header + body))
        else:
            self._send(memoryview(header))
            self._send(memoryview(body))
        return False

    def flush(self) -> None:
        """Write the jobs kept by ``send_job(..., defer=True)``: their tickets in one write, then the jobs in one."""
        if not self._deferred:
            return
        if self._deferred_tickets:
            self._write_tickets(b"".join(self._deferred_tickets))
            self._deferred_tickets.clear()
        frames = self._deferred
        self._deferred = []
        self._send(memoryview(frames[0] if len(frames) == 1 else b"".join(frames)))

    def _write_tickets(self, data: bytes) -> None:
        """Write tickets (before their jobs: the worker takes a job's ticket once it has read the job)."""
        if self._ticket_w is not None:
            try:
                os.write(self._ticket_w, data)
            except OSError:  # pragma: no cover - the pipe holds a few tickets at most
                pass

    def _send(self, view: memoryview) -> None:
        if self._out or self.job_fd is None:
            self._out.append(view)
            return
        try:
            n = os.write(self.job_fd, view)
        except BlockingIOError:
            n = 0
        except (BrokenPipeError, OSError):
            return  # the worker is gone; its exit is handled via the sentinel
        if n < len(view):
            self._out.append(view[n:])
            self._out_ready.set()

    @trio.lowlevel.enable_ki_protection
    async def write_loop(self) -> None:
        """Flush queued bytes whenever the pipe has room (runs for the worker's life)."""
        while True:
            await self._out_ready.wait()
            self._out_ready = trio.Event()
            while self._out:
                fd = self.job_fd
                if fd is None:
                    self._out.clear()
                    break
                await trio.lowlevel.wait_writable(fd)
                view = self._out[0]
                try:
                    n = os.write(fd, view)
                except BlockingIOError:
                    continue
                except OSError:
                    self._out.clear()
                    return
                self.writes += 1
                if n == len(view):
                    self._out.pop(0)
                else:
                    self._out[0] = view[n:]

    def traffic(self) -> int:
        """A count that grows whenever bytes move between us and the worker (it is not stuck)."""
        return self.reader.reads + self.writes

    def traffic_waiting(self) -> bool:
        """True if bytes can move right now and we have not moved them yet (our event loop is behind).

        Its messages wait unread in the pipe, or queued job bytes could be written: the worker is not
        stuck, we are (e.g. after the event loop was blocked for a while).
        """
        if self.reader.fd >= 0 and _readable(self.reader.fd):
            return True
        return bool(self._out) and self.job_fd is not None and _ready(self.job_fd, select.POLLOUT)

    def take_back(self) -> set[int]:
        """Take back the tickets the worker has not taken: those jobs will never start.

        A pipe read is atomic: each ticket goes either to the worker (which then
        starts its job) or to us. Returns the sequence numbers taken back.
        """
        self.flush()  # a ticket not written yet is taken back by reading it back, as any other
        fd = self._ticket_r
        if fd is None:
            return set()
        try:
            data = os.read(fd, 64 * _TICKET.size)
        except OSError:  # BlockingIOError: the worker took every ticket
            return set()
        seqs = {seq for (seq,) in _TICKET.iter_unpack(data)}
        self.taken_back |= seqs
        return seqs

    def regrant(self, seq: int) -> None:
        """Grant job ``seq`` again after its ticket was taken back with another's: a new ticket and frame.

        The worker runs a job at most once, from whichever of its frames it
        reads while holding its one ticket, and skips the others.
        """
        self.taken_back.discard(seq)
        self.send_job(seq, self.payloads[seq], ticketed=True)

    def close_jobs(self) -> None:
        """Close the job pipe: the worker exits after its current job."""
        self.flush()
        fd, self.job_fd = self.job_fd, None
        if fd is not None:
            trio.lowlevel.notify_closing(fd)
            os.close(fd)
        self._out.clear()

    # --- killing and reaping ---------------------------------------------------
    def terminate(self, seq: int) -> None:
        """Ask the job of task ``seq`` to stop (graceful cancel): name it on the cancel pipe, then SIGTERM.

        Only the worker is signalled, not its group: the job's own cleanup
        decides what happens to its children (the hard kill after the grace
        period reaches them all). A SIGTERM with no request on the pipe is
        someone else's, and the worker dies of it like any process.
        """
        fd = self._cancel_fd
        if fd is None or self.exitcode is not None:
            return
        with contextlib.suppress(OSError):  # a full pipe already holds requests enough
            os.write(fd, struct.pack("<Q", seq))
        with contextlib.suppress(OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGTERM)
            else:  # pragma: no cover - not Linux
                os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the worker and its process group (what its job spawned).

        All three, always: the group the worker started (its pid), the group it
        is in now (a job may have moved it with ``setpgid``), and the worker
        itself through its pidfd, so the kill never misses the one process
        whose death ends the task.
        """
        if self.exitcode is not None:
            return
        groups = {self.pid}
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(self.pid))
        # A worker still starting is in the group it inherited (ours, or the
        # forkserver's): never signal that one.
        groups.discard(os.getpgrp())
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)

    def kill_group(self) -> None:
        """SIGKILL what is left in the process group the worker made (its pid), once the worker is dead.

        A worker that died on its own was sent no kill: the processes its job
        started are still running there, with no subreaper left to sweep them.
        The group's id cannot be reused while any of them is alive.
        """
        if self.pid != os.getpgrp():
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)

    async def wait_exit(self) -> None:
        """Wait until the worker process has exited (it may not be reaped yet)."""
        await trio.lowlevel.wait_readable(self.pidfd if self.pidfd is not None else self.sentinel)

    def has_exited(self) -> bool:
        """True if the worker process has exited (without waiting)."""
        return _readable(self.pidfd if self.pidfd is not None else self.sentinel)

    def reap(self) -> int | None:
        """Collect the exit status if it is known yet (never blocks); return it.

        A spawned worker is our child: its status is there as soon as it has
        exited. A forkserver worker's status arrives on the sentinel once the
        forkserver has reaped it; if the forkserver died, the status is lost
        and this returns None.
        """
        if self.exitcode is None:
            self.process.join(0)
            code = self.process.exitcode
            if code == 255 and self._forkserver_fd is not None and _readable(self._forkserver_fd):
                code = None  # end-of-file on the sentinel: the forkserver is gone, not the worker's code
                self.status_lost = True
            self.exitcode = code
        return self.exitcode

    async def wait_reaped(self, limit: float) -> int | None:
        """Wait (at most ``limit`` seconds) until the exit status is known; return it."""
        with trio.move_on_after(limit):
            delay = 0.001
            while self.reap() is None and not self.status_lost:
                if self._via_forkserver:
                    await trio.lowlevel.wait_readable(self.sentinel)
                else:  # pragma: no cover - an exited child is reapable at once
                    await trio.sleep(delay)
                    delay = min(delay * 2, 0.1)
        return self.exitcode

    def release(self) -> None:
        """Close every descriptor the parent holds for this worker."""
        self.close_jobs()
        fd = self.reader.fd
        if fd >= 0:
            trio.lowlevel.notify_closing(fd)
            os.close(fd)
            self.reader.fd = -1
        if self.pidfd is not None:
            trio.lowlevel.notify_closing(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
        for name in ("_cancel_fd", "_ticket_r", "_ticket_w"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
        if self.exitcode is None and not self.status_lost:
            # Still not reported (the forkserver is alive but silent): leave the
            # Process object to multiprocessing's own cleanup rather than block.
            log.warning("worker %s: exit status never reported; not waiting for it", self.pid)
            return
        with contextlib.suppress(ValueError):
            self.process.close()


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``, or None where Linux pidfds are not available."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:  # pragma: no cover - not Linux
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:  # pragma: no cover - already reaped (ESRCH) or pidfds unsupported
        return None
    os.set_blocking(fd, False)
    return fd


#: One pidfd per forkserver process our workers came from (there is a new one after a restart).
_forkserver_pidfds: dict[int, int] = {}


def current_forkserver_pidfd() -> int | None:
    """A pidfd of the forkserver that starts workers now (after ``Process.start()``).

    It never reaps the forkserver: multiprocessing reaps and restarts a dead
    forkserver itself, the next time a worker starts.
    """
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is None:  # pragma: no cover - not started through the forkserver
        return None
    fd = _forkserver_pidfds.get(pid)
    if fd is None:
        fd = _open_pidfd(pid)
        if fd is not None:
            _forkserver_pidfds[pid] = fd
    return fd


def _readable(fd: int) -> bool:
    return _ready(fd, select.POLLIN)


def _ready(fd: int, events: int) -> bool:
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(0))
