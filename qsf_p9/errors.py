"""The errors of the 9P codec; each carries the Linux errno to answer with."""

from __future__ import annotations

import errno as _errno


class ProtocolError(Exception):
    """Bytes from the peer broke the protocol; `errno` is the errno to answer with."""

    def __init__(self, message: str, *, errno: int = _errno.EPROTO) -> None:
        super().__init__(message)
        self.errno = errno


class FramingError(ProtocolError):
    """The stream is unusable (size < 7, size > msize, a truncated frame at EOF).

    The only way on is to close the connection.
    """


class MessageError(ProtocolError):
    """One frame was malformed, or of an unknown or unexpected type.

    The frame was consumed and the stream goes on: a server answers
    Rlerror(errno) on `tag`.
    """

    def __init__(self, message: str, *, tag: int, type: int, errno: int = _errno.EINVAL) -> None:
        super().__init__(message, errno=errno)
        self.tag = tag
        self.type = type
