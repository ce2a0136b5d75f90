"""The one incremental frame parser, shared by the parent and the worker (stdlib only).

:class:`Framer` is sans-IO: bytes in, :mod:`._protocol` messages out. The
parent's reader feeds it from a non-blocking pipe, the worker's job reader
from a blocking one; the property tests feed it at random chunk boundaries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from ._protocol import DECODERS, HEADER, HEADER_SIZE, FrameTooLarge, Message, ProtocolError, decode

#: Scratch buffer size: frames up to about this size never get their own buffer.
_SCRATCH = 1 << 16
#: Read size while a large body arrives (the pipes hold 1 MiB).
_CHUNK = 1 << 20

HeaderCheck: TypeAlias = Callable[[int, int, int], None]


class Framer:
    """Incremental, sans-IO frame parser: bytes in, messages out, no I/O inside.

    Use it like asyncio's ``BufferedProtocol``: read into :meth:`buffer`,
    then call :meth:`received` with the byte count, which decodes every
    frame that is now complete. :meth:`feed` does both for bytes you
    already hold. Small frames are parsed straight out of one persistent
    scratch buffer; a larger body is read 1 MiB at a time and appended to
    its own buffer, which grows only as its bytes arrive: a header is never
    trusted for an allocation.

    Args:
        kinds: The frame kinds this side accepts; any other is corrupt.
        max_size: Largest body accepted. A header claiming more raises
            :class:`FrameTooLarge` before any of its body is kept.
        check_header: Called as ``check_header(kind, seq, length)`` for a
            frame whose body is not yet complete, before the framer buffers
            more of it (possibly more than once for one frame); raise (e.g.
            ProtocolError) to refuse it. Frames that arrived whole are
            simply decoded and delivered.

    After any exception the framer is broken and raises ProtocolError.
    """

    __slots__ = (
        "_body",
        "_broken",
        "_check",
        "_chunk",
        "_end",
        "_head",
        "_kinds",
        "_limit",
        "_scratch",
        "_start",
        "_view",
    )

    def __init__(self, kinds: frozenset[int], max_size: int, check_header: HeaderCheck | None = None) -> None:
        self._kinds = kinds
        self._limit = max_size
        self._check = check_header
        self._scratch = bytearray(_SCRATCH)
        self._view = memoryview(self._scratch)
        self._start = 0  # unparsed bytes are _scratch[_start:_end]
        self._end = 0
        self._body: bytearray | None = None  # a large body being received
        self._chunk = memoryview(b"")  # where its bytes are read to, then appended
        self._head = (0, 0, 0)
        self._broken = False

    @property
    def idle(self) -> bool:
        """True between frames (an end-of-file here is a clean one)."""
        return self._body is None and self._start == self._end

    @property
    def receiving(self) -> tuple[int, int] | None:
        """``(kind, seq)`` of the large frame whose body is arriving now, or None."""
        return None if self._body is None else self._head[:2]

    def buffer(self) -> memoryview:
        """Where the next bytes should be read to: non-empty, and valid until :meth:`received`.

        The framer never resizes a buffer it handed out, so a caller may
        keep this view across reads that found nothing.
        """
        if self._broken:
            raise ProtocolError("the stream already broke")
        body = self._body
        if body is not None:
            return self._chunk[: self._head[2] - len(body)]  # never past this frame
        if self._end == _SCRATCH:  # only a partial frame is left, at the back: move it forward
            size = self._end - self._start
            self._scratch[:size] = bytes(self._view[self._start : self._end])
            self._start, self._end = 0, size
        return self._view[self._end :]

    def received(self, n: int, out: list[Message]) -> memoryview:
        """``n`` bytes were written into :meth:`buffer`: append completed messages to ``out``.

        Returns the next :meth:`buffer` (one call per read on the hot path).
        """
        if self._broken:
            raise ProtocolError("the stream already broke")
        try:
            body = self._body
            if body is not None:
                body += self._chunk[:n]  # grows with the data (realloc: no copy of what it holds)
                if len(body) == self._head[2]:
                    kind, seq, _length = self._head
                    self._body, self._chunk = None, memoryview(b"")
                    out.append(decode(kind, seq, body))
                return self.buffer()
            # The hot path, inline: whole frames straight out of the scratch buffer.
            view = self._view
            pos, end = self._start, self._end + n
            kinds, limit, decoders = self._kinds, self._limit, DECODERS
            while end - pos >= HEADER_SIZE:
                kind, seq, length = HEADER.unpack_from(view, pos)
                if kind not in kinds:
                    raise ProtocolError(f"corrupt frame header (kind={kind}, length={length})")
                if length > limit:
                    raise FrameTooLarge(kind, seq, length, limit)
                start = pos + HEADER_SIZE
                if end - start >= length:
                    out.append(decoders[kind](seq, bytes(view[start : start + length])))  # every kind has one
                    pos = start + length
                    continue
                if self._check is not None:
                    self._check(kind, seq, length)
                if length > _SCRATCH - HEADER_SIZE:  # will not fit the scratch: its own buffer
                    self._body, self._head = bytearray(view[start:end]), (kind, seq, length)
                    self._chunk = memoryview(bytearray(min(_CHUNK, length)))
                    self._start = self._end = 0
                    return self.buffer()
                break
            if pos == end:
                self._start = self._end = 0
                return view
            self._start, self._end = pos, end
            return self.buffer()
        except BaseException:
            self._broken = True
            raise

    def feed(self, data: bytes | bytearray | memoryview, out: list[Message]) -> None:
        """Parse ``data`` (of any length), appending completed messages to ``out``."""
        src = memoryview(data)
        dest = self.buffer()
        while src:
            n = min(len(dest), len(src))
            dest[:n] = src[:n]
            dest = self.received(n, out)
            src = src[n:]
