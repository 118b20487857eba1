"""Frames in and out: `encode` a message, and a sans-I/O `Decoder` for a byte stream.

A frame is size[4] type[1] tag[2] body; size counts the whole frame. The
decoder works like h11's connection: `receive_data` only buffers (b"" means
EOF), `next_message` returns (tag, message), NEED_DATA or EOF, or raises
MessageError (one bad frame, consumed; the stream goes on) or FramingError
(the stream is unusable).
"""

from __future__ import annotations

import errno
import struct
from collections import deque
from collections.abc import Callable
from enum import Enum
from functools import partial
from typing import Final, Literal

from . import constants as c
from . import fast, spec
from .errors import FramingError, MessageError
from .messages import REPLIES, REQUESTS, Message

__all__ = [
    "DIRENT_OVERHEAD", "EOF", "NEED_DATA", "QSF_DIRENT_OVERHEAD", "QSF_EVENT_OVERHEAD",
    "RREAD_OVERHEAD", "Decoder", "encode",
]

# Bytes of an Rread frame besides its data: size[4] type[1] tag[2] count[4].
RREAD_OVERHEAD: Final = 11
# A Rreaddir entry takes DIRENT_OVERHEAD + len(name) bytes.
DIRENT_OVERHEAD: Final = 24
# An Rqsfreaddir entry: a Rreaddir entry, flags[1] and a 153-byte Rgetattr body.
QSF_DIRENT_OVERHEAD: Final = DIRENT_OVERHEAD + 1 + 153
# An Rqsfwatch event takes QSF_EVENT_OVERHEAD + len(name) bytes.
QSF_EVENT_OVERHEAD: Final = 19

_MAX_FRAME: Final = 0xFFFFFFFF
# Pieces smaller than this that arrive behind a partial frame are gathered in
# one bytearray (flushed at _TAIL_LIMIT), so that a peer trickling bytes costs
# neither a chunk object per byte nor quadratic copies.
_SMALL_PIECE: Final = 4096
_TAIL_LIMIT: Final = 64 * 1024
_HEADER = struct.Struct("<IBH")
_SIZE = struct.Struct("<I")


class _Sentinel(Enum):
    NEED_DATA = "NEED_DATA"
    EOF = "EOF"

    def __repr__(self) -> str:
        return self.value

    __str__ = __repr__


NEED_DATA: Final = _Sentinel.NEED_DATA
EOF: Final = _Sentinel.EOF


def encode(tag: int, message: Message) -> bytes:
    """The whole frame of `message` on `tag`; ValueError if it cannot go on the wire."""
    encoder = fast.ENCODERS.get(type(message))
    if encoder is not None:
        return encoder(tag, message)
    body = spec.encode_body(message)
    size = c.HDRSZ + len(body)
    if size > _MAX_FRAME:
        raise ValueError(f"{type(message).__name__} too large for a frame ({size} bytes)")
    try:
        header = _HEADER.pack(size, message.TYPE, tag)
    except struct.error as error:
        raise ValueError(f"cannot encode tag {tag!r}: {error}") from None
    return header + body


class Decoder:
    """Turns the bytes of one direction of a 9P stream into messages.

    replies=False decodes T-messages (a server), replies=True R-messages (a
    client). `msize` bounds every frame and may be lowered after Tversion.
    A bulk payload (Twrite.data, Rread.data) is a memoryview into the
    received bytes; the decoder keeps no reference to a consumed frame.
    """

    def __init__(self, *, replies: bool, msize: int = c.MAX_MSIZE) -> None:
        self.replies = replies
        self.msize = msize
        self._types = REPLIES if replies else REQUESTS
        # type number -> body decoder, for the types of this direction only
        self._decoders: dict[int, Callable[[memoryview], Message]] = {
            type_: fast.DECODERS.get(type_) or partial(spec.decode_body, cls)
            for type_, cls in self._types.items()
        }
        # Unconsumed received bytes: chunks (oldest first, never empty), then tail.
        self._chunks: deque[memoryview] = deque()
        self._tail = bytearray()
        self._buffered = 0
        self._frame_size: int | None = None  # of the frame at the head, once known
        self._eof = False
        self._failure: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return self._buffered

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the peer; b"" means the peer closed its end."""
        if self._eof:
            raise RuntimeError("receive_data after EOF")
        if not data:
            self._eof = True
            return
        if not isinstance(data, bytes):
            # A caller's mutable buffer may be reused: keep an immutable copy.
            data = bytes(data)
        if self._buffered == 0 or len(data) >= _SMALL_PIECE:
            self._flush_tail()
            self._chunks.append(memoryview(data))
        else:
            # Small pieces after a partial frame: gather them instead of keeping
            # one chunk object per piece.
            self._tail += data
            if len(self._tail) >= _TAIL_LIMIT:
                self._flush_tail()
        self._buffered += len(data)

    def next_message(self) -> tuple[int, Message] | Literal[_Sentinel.NEED_DATA, _Sentinel.EOF]:
        """The next (tag, message), NEED_DATA, or EOF once the stream ended cleanly."""
        if self._failure is not None:
            raise self._failure
        size = self._frame_size
        if size is None:
            if self._buffered < 4:
                return self._need_data()
            (size,) = _SIZE.unpack_from(self._head(4))
            if size < c.HDRSZ or size > self.msize:
                raise self._fail(f"frame size {size} is outside [{c.HDRSZ}, msize {self.msize}]")
            self._frame_size = size
        if self._buffered < size:
            return self._need_data()
        self._frame_size = None
        frame = self._take(size)
        _, type_, tag = _HEADER.unpack_from(frame)
        decode = self._decoders.get(type_)
        if decode is None:
            raise MessageError(
                f"unsupported message type {type_}", tag=tag, type=type_, errno=errno.EOPNOTSUPP
            )
        try:
            return tag, decode(frame[c.HDRSZ :])
        except (ValueError, TypeError, struct.error) as error:
            name = self._types[type_].__name__
            raise MessageError(
                f"malformed {name}: {error}", tag=tag, type=type_, errno=errno.EINVAL
            ) from None

    def _need_data(self) -> Literal[_Sentinel.NEED_DATA, _Sentinel.EOF]:
        if not self._eof:
            return NEED_DATA
        if self._buffered == 0:
            return EOF
        raise self._fail(f"stream ended inside a frame ({self._buffered} bytes)")

    def _fail(self, reason: str) -> FramingError:
        self._failure = FramingError(reason)
        return self._failure

    def _flush_tail(self) -> None:
        if self._tail:
            self._chunks.append(memoryview(bytes(self._tail)))
            self._tail.clear()

    def _gather(self, count: int) -> None:
        """Make the first chunk exactly the first `count` bytes (count <= buffered).

        Copies only those bytes: the rest of the last chunk they reach stays a view.
        """
        self._flush_tail()
        parts = []
        while count:
            part = self._chunks.popleft()
            if len(part) > count:
                self._chunks.appendleft(part[count:])
                part = part[:count]
            parts.append(part)
            count -= len(part)
        self._chunks.appendleft(memoryview(b"".join(parts)))

    def _head(self, count: int) -> memoryview:
        """A chunk starting with the first `count` buffered bytes (count <= buffered)."""
        if not self._chunks or len(self._chunks[0]) < count:
            self._gather(count)
        return self._chunks[0]

    def _take(self, count: int) -> memoryview:
        """Consume the first `count` buffered bytes (count <= buffered)."""
        head = self._head(count)
        self._buffered -= count
        if len(head) == count:
            self._chunks.popleft()
            return head
        self._chunks[0] = head[count:]
        return head[:count]
