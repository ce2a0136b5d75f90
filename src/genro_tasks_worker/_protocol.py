"""The wire format shared by the parent and the worker processes (stdlib only).

Everything that crosses a worker's pipes is defined here, and only here: the
named messages and how each one is encoded and decoded. The one incremental
parser both sides use to turn bytes into messages is
:class:`~._framing.Framer`, next door.

Every message travels as one *frame*: a fixed 17-byte header followed by
``length`` bytes of body::

    kind: uint8 | seq: uint64 | length: uint64 | body[length]

``seq`` is the manager's sequence number of the task the frame is about (the
worker's pid for :class:`Ready` and :class:`InitFailed`). Bodies are plain
length-prefixed fields, never pickles of protocol data: the only pickles on
the wire are a job's payload and a successful result, carried as opaque
bytes, so neither the framer nor the supervisor ever unpickles user objects.

Parent to worker: :class:`Job`. Worker to parent: :class:`Ready`,
:class:`InitFailed`, :class:`Started`, :class:`Progress`, then exactly one of
:class:`DoneOk`, :class:`DoneError`, :class:`DoneBadResult`,
:class:`DoneTooLarge` per job.

**Message size.** Each side has a largest accepted body (``max_message_size``
of the TaskManager). The framer never allocates on the word of a header: a
body is buffered as its bytes arrive, and a header claiming more than the
limit raises :class:`FrameTooLarge` (naming the frame's task) before any of
its body is kept. The worker never *sends* a frame over the limit:
:func:`encode_within` turns an over-limit result into :class:`DoneTooLarge`
and shrinks an over-limit error report or progress message until it fits.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

HEADER: Final = struct.Struct("<BQQ")
HEADER_SIZE: Final = HEADER.size

#: Default largest message body (1 GiB); see ``TaskManager(max_message_size=...)``.
DEFAULT_MAX_MESSAGE_SIZE: Final = 1 << 30
#: Smallest limit accepted: every error report, shrunk, must still fit.
MIN_MAX_MESSAGE_SIZE: Final = 1 << 20
#: Largest limit accepted (1 TiB): beyond it a header is corrupt, whatever the setting.
MAX_MAX_MESSAGE_SIZE: Final = 1 << 40

# Frame kinds. parent -> worker
JOB: Final = 1
#: A job sent to a busy worker: it runs only if the worker gets its ticket (see _loop._take_ticket).
JOB_TICKETED: Final = 2
# worker -> parent
READY: Final = 10
STARTED: Final = 11
PROGRESS: Final = 12
DONE_OK: Final = 13
DONE_ERROR: Final = 14
DONE_BAD_RESULT: Final = 15
INIT_FAILED: Final = 16
DONE_TOO_LARGE: Final = 17

JOB_KINDS: Final = frozenset({JOB, JOB_TICKETED})
WORKER_KINDS: Final = frozenset(
    {READY, STARTED, PROGRESS, DONE_OK, DONE_ERROR, DONE_BAD_RESULT, INIT_FAILED, DONE_TOO_LARGE}
)

#: Pickle protocol used on both sides (out-of-band buffers are not used).
PICKLE_PROTOCOL: Final = 5

#: Bodies at least this large are written with a separate syscall from their header.
SPLIT_WRITE: Final = 1 << 16

# Shrinking an error report that does not fit (characters kept).
_KEEP_TYPE = 1_000
_KEEP_MESSAGE = 4_000
_KEEP_TRACEBACK = 32_000


class CancelRequested(BaseException):
    """Raised inside a job when the parent asks it to stop (graceful cancel).

    It derives from BaseException, like KeyboardInterrupt, so a broad
    ``except Exception`` in the job does not swallow it; ``finally`` blocks
    and context managers run as usual. Clean up and let it propagate: the
    task is then recorded CANCELLED. If the job does not end before the
    grace period runs out, its worker is killed.
    """


class ProtocolError(Exception):
    """A peer sent bytes that are not a valid frame."""


class FrameTooLarge(ProtocolError):
    """A frame header claims a body larger than this side accepts.

    Raised by :class:`~._framing.Framer` as soon as the header is complete,
    before any of the body is buffered. The framer is unusable afterwards.
    """

    def __init__(self, kind: int, seq: int, length: int, limit: int) -> None:
        self.kind = kind
        self.seq = seq
        self.length = length
        self.limit = limit
        super().__init__(
            f"a {KIND_NAMES.get(kind, f'kind {kind}')} frame about #{seq} claims {length:,} bytes, "
            f"over max_message_size={limit:,}"
        )


# ----------------------------------------------------------------- messages
@dataclass(frozen=True, slots=True)
class Failure:
    """How a job (or an initializer) failed, as the worker saw it.

    Attributes:
        exc_bytes: The exception pickled with its traceback (tblib), or None
            if it could not be pickled. Unpickled only by ``result()``.
        type_name: Qualified name of the exception's type.
        message: ``str()`` of the exception (best effort).
        traceback: The formatted remote traceback.
    """

    exc_bytes: bytes | None
    type_name: str
    message: str
    traceback: str


@dataclass(frozen=True, slots=True)
class Job:
    """Run a job: ``payload`` is the pickled ``(func, args, kwargs, memory_limit)``.

    ``ticketed``: the job was sent ahead, to a worker busy with another one;
    the worker runs it only if it gets its ticket (the parent may take it back).
    """

    seq: int
    payload: bytes | bytearray
    ticketed: bool = False


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker (``pid``) started, ran its initializer, and takes jobs."""

    pid: int


@dataclass(frozen=True, slots=True)
class InitFailed:
    """The worker's initializer raised; the worker exits."""

    pid: int
    failure: Failure


@dataclass(frozen=True, slots=True)
class Started:
    """The worker has taken task ``seq`` and is about to run it."""

    seq: int


@dataclass(frozen=True, slots=True)
class Progress:
    """The newest progress of task ``seq`` (None leaves a field unchanged)."""

    seq: int
    fraction: float | None
    message: str | None


@dataclass(frozen=True, slots=True)
class DoneOk:
    """Task ``seq`` returned; ``result`` is the pickled value (opaque here)."""

    seq: int
    result: bytes | bytearray


@dataclass(frozen=True, slots=True)
class DoneError:
    """Task ``seq`` raised."""

    seq: int
    failure: Failure


@dataclass(frozen=True, slots=True)
class DoneBadResult:
    """Task ``seq`` returned a value of type ``type_name`` that could not be pickled."""

    seq: int
    type_name: str
    reason: str


@dataclass(frozen=True, slots=True)
class DoneTooLarge:
    """Task ``seq`` produced a ``what`` (e.g. "result") of ``size`` bytes, over the limit."""

    seq: int
    what: str
    size: int


WorkerMessage: TypeAlias = Ready | InitFailed | Started | Progress | DoneOk | DoneError | DoneBadResult | DoneTooLarge
Message: TypeAlias = Job | WorkerMessage
#: A message that ends a job.
Done: TypeAlias = DoneOk | DoneError | DoneBadResult | DoneTooLarge

KIND_NAMES: Final = {
    JOB: "job",
    JOB_TICKETED: "job",
    READY: "ready",
    STARTED: "started",
    PROGRESS: "progress report",
    DONE_OK: "result",
    DONE_ERROR: "error report",
    DONE_BAD_RESULT: "bad-result report",
    INIT_FAILED: "initializer failure",
    DONE_TOO_LARGE: "too-large report",
}


# ----------------------------------------------------------------- fields
_LEN: Final = struct.Struct("<q")
_PROGRESS: Final = struct.Struct("<Bd")
_SIZE: Final = struct.Struct("<Q")


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def _pack_fields(*fields: bytes | None) -> bytes:
    """Concatenate length-prefixed fields (length -1 stands for None)."""
    parts: list[bytes] = []
    for field in fields:
        if field is None:
            parts.append(_LEN.pack(-1))
        else:
            parts.append(_LEN.pack(len(field)))
            parts.append(field)
    return b"".join(parts)


def _unpack_fields(body: bytes | bytearray, count: int) -> list[bytes | None]:
    """Split ``body`` into exactly ``count`` fields, or raise ProtocolError."""
    view = memoryview(body)
    fields: list[bytes | None] = []
    pos = 0
    for _ in range(count):
        if len(view) - pos < _LEN.size:
            raise ProtocolError("truncated field header")
        (length,) = _LEN.unpack_from(view, pos)
        pos += _LEN.size
        if length == -1:
            fields.append(None)
            continue
        if length < 0 or length > len(view) - pos:
            raise ProtocolError(f"field of {length} bytes in a body of {len(view)}")
        fields.append(bytes(view[pos : pos + length]))
        pos += length
    if pos != len(view):
        raise ProtocolError(f"{len(view) - pos} stray bytes after the fields")
    return fields


def _str_field(field: bytes | None) -> str:
    if field is None:
        raise ProtocolError("missing text field")
    try:
        return field.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"bad text field: {exc}") from None


def _encode_failure(failure: Failure) -> bytes:
    return _pack_fields(failure.exc_bytes, _text(failure.type_name), _text(failure.message), _text(failure.traceback))


def _decode_failure(body: bytes | bytearray) -> Failure:
    exc_bytes, type_name, message, tb = _unpack_fields(body, 4)
    return Failure(exc_bytes, _str_field(type_name), _str_field(message), _str_field(tb))


def _no_body(body: bytes | bytearray) -> None:
    if body:
        raise ProtocolError(f"unexpected body of {len(body)} bytes")


# ----------------------------------------------------------------- encoding
def encode(msg: Message) -> tuple[bytes, bytes | bytearray]:
    """Return the frame header and body of ``msg``.

    Send them as ``header + body``, or as two writes for a large body (see
    :data:`SPLIT_WRITE`), so a large payload is never copied.
    """
    kind: int
    seq: int
    body: bytes | bytearray
    if type(msg) is Started:
        kind, seq, body = STARTED, msg.seq, b""
    elif type(msg) is DoneOk:
        kind, seq, body = DONE_OK, msg.seq, msg.result
    elif type(msg) is Job:
        kind, seq, body = JOB_TICKETED if msg.ticketed else JOB, msg.seq, msg.payload
    elif type(msg) is Progress:
        flags = (msg.fraction is not None) | (msg.message is not None) << 1
        text = b"" if msg.message is None else _text(msg.message)
        kind, seq, body = PROGRESS, msg.seq, _PROGRESS.pack(flags, msg.fraction or 0.0) + text
    elif type(msg) is DoneError:
        kind, seq, body = DONE_ERROR, msg.seq, _encode_failure(msg.failure)
    elif type(msg) is DoneBadResult:
        kind, seq, body = DONE_BAD_RESULT, msg.seq, _pack_fields(_text(msg.type_name), _text(msg.reason))
    elif type(msg) is DoneTooLarge:
        kind, seq, body = DONE_TOO_LARGE, msg.seq, _SIZE.pack(msg.size) + _text(msg.what)
    elif type(msg) is Ready:
        kind, seq, body = READY, msg.pid, b""
    elif type(msg) is InitFailed:
        kind, seq, body = INIT_FAILED, msg.pid, _encode_failure(msg.failure)
    else:  # pragma: no cover - exhaustive
        raise TypeError(f"not a protocol message: {msg!r}")
    return HEADER.pack(kind, seq, len(body)), body


def _shrink(failure: Failure) -> Failure:
    """The same failure without its pickle, with its texts cut to a bounded size."""
    tb = failure.traceback
    if len(tb) > _KEEP_TRACEBACK:
        tb = "[... traceback cut to fit max_message_size ...]\n" + tb[-_KEEP_TRACEBACK:]
    message = failure.message
    if len(message) > _KEEP_MESSAGE:
        message = message[:_KEEP_MESSAGE] + " [... cut to fit max_message_size]"
    return Failure(None, failure.type_name[:_KEEP_TYPE], message, tb)


def encode_within(msg: WorkerMessage, limit: int) -> tuple[bytes, bytes | bytearray]:
    """Encode a worker's message so that its body is at most ``limit`` bytes.

    This is how a worker keeps to ``max_message_size``: a result over the
    limit becomes :class:`DoneTooLarge` (the task fails, the worker lives on),
    an error report loses its pickled exception and has its texts cut, a
    progress message is cut. ``limit`` must be at least
    :data:`MIN_MAX_MESSAGE_SIZE`.
    """
    header, body = encode(msg)
    if len(body) <= limit:
        return header, body
    size = len(body)
    if isinstance(msg, DoneOk):
        return encode(DoneTooLarge(msg.seq, "result", size))
    if isinstance(msg, DoneError):
        header, body = encode(DoneError(msg.seq, _shrink(msg.failure)))
        return (header, body) if len(body) <= limit else encode(DoneTooLarge(msg.seq, "error report", size))
    if isinstance(msg, InitFailed):
        return encode(InitFailed(msg.pid, _shrink(msg.failure)))
    if isinstance(msg, DoneBadResult):
        return encode(DoneBadResult(msg.seq, msg.type_name[:_KEEP_TYPE], msg.reason[:_KEEP_MESSAGE]))
    if isinstance(msg, Progress) and msg.message is not None:
        return encode(Progress(msg.seq, msg.fraction, msg.message[: (limit - _PROGRESS.size) // 4]))
    raise ProtocolError(f"a {type(msg).__name__} message of {size:,} bytes cannot fit {limit:,}")  # pragma: no cover


# ----------------------------------------------------------------- decoding
def _decode_progress(seq: int, body: bytes | bytearray) -> Progress:
    if len(body) < _PROGRESS.size:
        raise ProtocolError("truncated progress body")
    flags, fraction = _PROGRESS.unpack_from(body)
    if flags & ~3:
        raise ProtocolError(f"bad progress flags {flags}")
    if flags & 1 and not (0.0 <= fraction <= 1.0):
        raise ProtocolError(f"progress fraction {fraction!r} is not in [0, 1]")
    rest = bytes(body[_PROGRESS.size :])
    if not flags & 2 and rest:
        raise ProtocolError("progress text without its flag")
    return Progress(seq, fraction if flags & 1 else None, _str_field(rest) if flags & 2 else None)


def _decode_started(seq: int, body: bytes | bytearray) -> Started:
    if body:
        _no_body(body)
    return Started(seq)


def _decode_ready(seq: int, body: bytes | bytearray) -> Ready:
    if body:
        _no_body(body)
    return Ready(seq)


def _decode_bad_result(seq: int, body: bytes | bytearray) -> DoneBadResult:
    type_name, reason = _unpack_fields(body, 2)
    return DoneBadResult(seq, _str_field(type_name), _str_field(reason))


def _decode_too_large(seq: int, body: bytes | bytearray) -> DoneTooLarge:
    if len(body) < _SIZE.size:
        raise ProtocolError("truncated too-large body")
    (size,) = _SIZE.unpack_from(body)
    return DoneTooLarge(seq, _str_field(bytes(body[_SIZE.size :])), size)


DECODERS: Final[dict[int, Callable[[int, bytes | bytearray], Message]]] = {
    JOB: Job,
    JOB_TICKETED: lambda seq, body: Job(seq, body, True),
    READY: _decode_ready,
    STARTED: _decode_started,
    PROGRESS: _decode_progress,
    DONE_OK: DoneOk,
    DONE_ERROR: lambda seq, body: DoneError(seq, _decode_failure(body)),
    DONE_BAD_RESULT: _decode_bad_result,
    INIT_FAILED: lambda pid, body: InitFailed(pid, _decode_failure(body)),
    DONE_TOO_LARGE: _decode_too_large,
}


def decode(kind: int, seq: int, body: bytes | bytearray) -> Message:
    """Build the message of one frame, or raise ProtocolError if it is malformed."""
    decoder = DECODERS.get(kind)
    if decoder is None:
        raise ProtocolError(f"unknown message kind {kind}")
    return decoder(seq, body)


def pack_header(kind: int, seq: int, length: int) -> bytes:
    """Return a raw frame header (for tests that forge frames)."""
    return HEADER.pack(kind, seq, length)
