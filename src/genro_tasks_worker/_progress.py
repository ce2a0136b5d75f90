"""``report_progress``: the job-side half of progress reporting (stdlib only).

Inside a managed task the worker installs a :class:`ProgressChannel`; outside
one, :func:`report_progress` validates its arguments and does nothing else, so
job functions stay callable from plain unit tests.

Updates are coalesced: the newest value always wins, at most one frame leaves
the worker every :data:`MIN_INTERVAL` seconds, and a flusher thread makes sure
a value reported just after a send is delivered without waiting for the next
call.

Progress belongs to the task it was reported from: a thread that was already
alive when a job started (one a previous job left behind) is not that job's,
and a value reported for a job that has ended is dropped.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from numbers import Real
from typing import Final

from ._protocol import DEFAULT_MAX_MESSAGE_SIZE, Progress

#: Minimum spacing of progress frames sent by one worker, in seconds.
MIN_INTERVAL: Final = 0.025

_Update = tuple[float | None, str | None]


class ProgressChannel:
    """Coalescing sender of PROGRESS frames for the task currently running."""

    def __init__(
        self,
        send_frame: Callable[[Progress], None],
        lock: threading.Lock,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._send_frame = send_frame
        self._lock = lock
        #: Messages longer than this many characters are checked against the limit.
        self.max_chars = (max_message_size - 16) // 4
        self.max_message_size = max_message_size
        self._wake = threading.Event()
        self.seq = 0
        self._pending: _Update | None = None
        self._next_send = 0.0
        self._armed = False
        thread = threading.Thread(target=self._flusher, name="genro-tasks-progress", daemon=True)
        thread.start()
        worker_thread(thread)

    def begin(self, seq: int) -> None:
        """Start reporting for the task with sequence number ``seq``."""
        with self._lock:
            self.seq = seq
            self._pending = None
            self._next_send = 0.0

    def update(self, seq: int, update: _Update) -> None:
        """Record ``update`` for task ``seq``; send it now, or arm the flusher to send it soon."""
        with self._lock:  # the flusher thread takes _pending under the same lock
            if seq != self.seq:
                return  # reported for a task that has ended (by a thread that outlived its job)
            old = self._pending
            if old is not None and (update[0] is None or update[1] is None):
                update = (old[0] if update[0] is None else update[0], old[1] if update[1] is None else update[1])
            self._pending = update
            if time.monotonic() >= self._next_send:
                self._send_pending_locked()
                return
            wake = not self._armed
            self._armed = True
        if wake:
            self._wake.set()

    def finish_locked(self) -> None:
        """Send whatever is pending; called, lock held, before the result goes out."""
        self._send_pending_locked()
        self.seq = 0

    def _send_pending_locked(self) -> None:
        update = self._pending
        if update is None or self.seq == 0:
            return
        self._pending = None
        self._send_frame(Progress(self.seq, update[0], update[1]))
        self._next_send = time.monotonic() + MIN_INTERVAL

    def _flusher(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            delay = self._next_send - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with self._lock:
                self._armed = False
                self._send_pending_locked()


#: The running job's (channel, seq, native ids of threads that are not its own), or None.
_job: tuple[ProgressChannel, int, frozenset[int]] | None = None
#: The running job's channel, or None (its ``seq`` is the running task's).
_channel: ProgressChannel | None = None
#: Native ids of the worker's own threads (they never report progress).
_worker_threads: set[int] = set()


def worker_thread(thread: threading.Thread) -> None:
    """Register a started thread of the worker's own (it is nobody's leftover)."""
    if thread.native_id is not None:
        _worker_threads.add(thread.native_id)


def _other_threads() -> frozenset[int]:
    """Native ids of the threads alive now, but the calling one and the worker's own.

    Threads known to :mod:`threading` (a thread started in C code that never
    registered there is not seen; the task check in ``update`` still applies).
    """
    if threading.active_count() <= len(_worker_threads) + 1:
        return frozenset()  # the common case, for the price of a len()
    ids = {thread.native_id for thread in threading.enumerate()}
    return frozenset(tid for tid in ids if tid is not None) - _worker_threads - {threading.get_native_id()}


def start_job(channel: ProgressChannel, seq: int) -> None:
    """Route progress to task ``seq``, from the calling thread and threads started after this."""
    global _job, _channel
    others = _other_threads()
    channel.begin(seq)
    _job = (channel, seq, others)
    _channel = channel


def end_job() -> None:
    """Stop routing progress anywhere (the job has ended)."""
    global _job, _channel
    _job = _channel = None


def report_progress(fraction: float | None = None, message: str | None = None) -> None:
    """Report the progress of the job that is running in this worker.

    Call it as often as you like: updates are coalesced (the newest value wins)
    and cost well under a microsecond when nothing has to be sent. The parent
    sees them as :attr:`TaskInfo.progress` and :attr:`TaskInfo.progress_message`.
    Outside a task run by a :class:`~genro_tasks.TaskManager` it validates its
    arguments and does nothing else; so it does from a thread an earlier job
    left running, and from a process the job forked.

    Args:
        fraction: How much of the job is done, a finite number in ``[0.0, 1.0]``,
            or ``None`` to leave the fraction unchanged.
        message: A short human-readable status line, or ``None`` to leave the
            message unchanged.

    Raises:
        ValueError: ``fraction`` is not a finite number between 0.0 and 1.0,
            or ``message`` is larger (UTF-8) than the manager's ``max_message_size``.
        TypeError: ``message`` is not a string.
    """
    if fraction is not None:
        value: object = fraction
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ValueError(f"report_progress: fraction must be a number in [0.0, 1.0], got {fraction!r}")
        try:
            fraction = float(value)
        except OverflowError:  # an int too large for a float is out of range too
            fraction = math.inf
        if not (0.0 <= fraction <= 1.0) or math.isnan(fraction):
            raise ValueError(f"report_progress: fraction must be a finite number in [0.0, 1.0], got {fraction!r}")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"report_progress: message must be a str or None, got {type(message).__name__}")
    job = _job
    if job is not None:
        channel, seq, others = job
        if others and threading.get_native_id() in others:
            return  # a thread that was alive before this job started is not this job's
        if message is not None and len(message) > channel.max_chars:
            size = len(message.encode("utf-8", "surrogatepass"))
            if size > channel.max_message_size - 16:
                raise ValueError(
                    f"report_progress: message is {size:,} bytes, over max_message_size="
                    f"{channel.max_message_size:,}; report a short status line instead"
                )
        channel.update(seq, (fraction, message))
