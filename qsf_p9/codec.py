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
from enum import Enum
from typing import Final, Literal

from . import constants as c
from . import fast, spec
from .errors import FramingError, MessageError
from .messages import REPLIES, REQUESTS, Message

__all__ = ["EOF", "NEED_DATA", "RREAD_OVERHEAD", "Decoder", "encode"]

# Bytes of an Rread frame besides its data: size[4] type[1] tag[2] count[4].
RREAD_OVERHEAD: Final = 11
# A Rreaddir entry takes DIRENT_OVERHEAD + len(name) bytes.
DIRENT_OVERHEAD: Final = 24

_MAX_FRAME: Final = 0xFFFFFFFF
# Pieces smaller than this are gathered in one bytearray, so that a peer
# trickling bytes costs neither a chunk object per byte nor quadratic copies.
_SMALL_PIECE: Final = 4096
_TAIL_LIMIT: Final = 64 * 1024
_HEADER = struct.Struct("<IBH")
_SIZE = struct.Struct("<I")


class _Sentinel(Enum):
    NEED_DATA = "NEED_DATA"
    EOF = "EOF"

    def __repr__(self) -> str:
        return self.value


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
        self._types = REPLIES if replies else REQUESTS
        self.msize = msize
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
        if len(data) < _SMALL_PIECE:
            self._tail += data
            if len(self._tail) >= _TAIL_LIMIT:
                self._flush_tail()
        else:
            self._flush_tail()
            self._chunks.append(memoryview(data))
        self._buffered += len(data)

    def _flush_tail(self) -> None:
        if self._tail:
            self._chunks.append(memoryview(bytes(self._tail)))
            self._tail.clear()

    def next_message(self) -> tuple[int, Message] | Literal[_Sentinel.NEED_DATA, _Sentinel.EOF]:
        """The next (tag, message), NEED_DATA, or EOF once the stream ended cleanly."""
        if self._failure is not None:
            raise self._failure
        size = self._frame_size
        if size is None:
            if self._buffered < 4:
                return self._need_data()
            size = self._check_size(_SIZE.unpack(self._peek(4))[0])
            self._frame_size = size
        if self._buffered < size:
            return self._need_data()
        self._frame_size = None
        return self._decode_frame(self._take(size))

    def _need_data(self) -> Literal[_Sentinel.NEED_DATA, _Sentinel.EOF]:
        if not self._eof:
            return NEED_DATA
        if self._buffered == 0:
            return EOF
        self._failure = FramingError(f"stream ended inside a frame ({self._buffered} bytes)")
        raise self._failure

    def _check_size(self, size: int) -> int:
        if size < c.HDRSZ:
            self._failure = FramingError(f"frame size {size} is less than {c.HDRSZ}")
        elif size > self.msize:
            self._failure = FramingError(f"frame size {size} exceeds msize {self.msize}")
        else:
            return size
        raise self._failure

    def _peek(self, count: int) -> memoryview:
        """The first `count` buffered bytes (count <= buffered), without consuming them."""
        self._flush_tail()
        head = self._chunks[0]
        if len(head) < count:
            parts = []
            have = 0
            while have < count:
                part = self._chunks.popleft()
                parts.append(part)
                have += len(part)
            head = memoryview(b"".join(parts))
            self._chunks.appendleft(head)
        return head[:count]

    def _take(self, count: int) -> memoryview:
        """Consume the first `count` buffered bytes (count <= buffered)."""
        self._flush_tail()
        self._buffered -= count
        head = self._chunks[0]
        if len(head) >= count:
            if len(head) == count:
                self._chunks.popleft()
            else:
                self._chunks[0] = head[count:]
            return head[:count]
        parts = []
        while count:
            part = self._chunks.popleft()
            if len(part) > count:
                self._chunks.appendleft(part[count:])
                part = part[:count]
            parts.append(part)
            count -= len(part)
        return memoryview(b"".join(parts))

    def _decode_frame(self, frame: memoryview) -> tuple[int, Message]:
        _, type_, tag = _HEADER.unpack_from(frame)
        cls = self._types.get(type_)
        if cls is None:
            raise MessageError(
                f"unsupported message type {type_}", tag=tag, type=type_, errno=errno.EOPNOTSUPP
            )
        body = frame[c.HDRSZ:]
        decoder = fast.DECODERS.get(type_)
        try:
            message = decoder(body) if decoder is not None else spec.decode_body(cls, body)
        except (ValueError, TypeError, struct.error) as error:
            raise MessageError(
                f"malformed {cls.__name__}: {error}", tag=tag, type=type_, errno=errno.EINVAL
            ) from None
        return tag, message
