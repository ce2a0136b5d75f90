"""Wire format shared by the parent and the worker processes (stdlib only).

Every message is one *frame*: a fixed 17-byte header followed by ``length``
bytes of body::

    kind: uint8 | seq: uint64 | length: uint64 | body[length]

``seq`` is the manager's sequence number of the task the frame is about (the
worker's pid for ``READY``). Bodies are pickles, except that a job's payload
and a successful result are carried as opaque pickled bytes so that the
supervisor never has to unpickle user objects.
"""

from __future__ import annotations

import struct
from typing import Final

HEADER: Final = struct.Struct("<BQQ")
HEADER_SIZE: Final = HEADER.size

#: Largest body either side accepts (1 TiB): anything above is a corrupt frame.
MAX_BODY: Final = 1 << 40

# parent -> worker
JOB: Final = 1

# worker -> parent
READY: Final = 10
STARTED: Final = 11
PROGRESS: Final = 12
DONE_OK: Final = 13
DONE_ERROR: Final = 14
DONE_BAD_RESULT: Final = 15
INIT_FAILED: Final = 16

WORKER_KINDS: Final = frozenset({READY, STARTED, PROGRESS, DONE_OK, DONE_ERROR, DONE_BAD_RESULT, INIT_FAILED})

#: Pickle protocol used on both sides (out-of-band buffers are not used).
PICKLE_PROTOCOL: Final = 5


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


def pack_header(kind: int, seq: int, length: int) -> bytes:
    """Return the header of a frame."""
    return HEADER.pack(kind, seq, length)
