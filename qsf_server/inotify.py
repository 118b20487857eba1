"""Linux inotify through ctypes: an fd, watches added by directory fd, parsed events.

No path is ever joined: a watch is added on `/proc/self/fd/N` of an O_PATH
descriptor the caller already holds (and checked to be a directory), so the
watched directory is exactly that one, found by the confined walk; IN_ONLYDIR
refuses anything else. Reading never blocks (IN_NONBLOCK): the caller waits for
readability.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from typing import Final, NamedTuple

IN_MODIFY: Final = 0x00000002
IN_ATTRIB: Final = 0x00000004
IN_CLOSE_WRITE: Final = 0x00000008
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_UNMOUNT: Final = 0x00002000
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000
IN_EXCL_UNLINK: Final = 0x04000000
IN_ISDIR: Final = 0x40000000
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC

# What a watch reports: changes of the directory's entries and of their data
# and attributes (IN_ATTRIB also covers extended attributes and link counts).
WATCH_MASK: Final = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
                     | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
                     | IN_EXCL_UNLINK)

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
READ_SIZE: Final = 64 * 1024

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    """The C library's inotify calls (the interpreter's own libc: no search, no subprocess)."""
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc = lib
    return _libc


class Event(NamedTuple):
    wd: int
    mask: int
    cookie: int
    name: bytes


def _check(result: int) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


class Inotify:
    """One inotify instance (non-blocking, close-on-exec)."""

    def __init__(self) -> None:
        self.fd = _check(_lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def add_watch(self, dir_fd: int, mask: int = WATCH_MASK) -> int:
        """A watch on the directory open as dir_fd (O_PATH is fine); its wd."""
        return _check(_lib().inotify_add_watch(self.fd, b"/proc/self/fd/%d" % dir_fd,
                                               mask | IN_ONLYDIR))

    def rm_watch(self, wd: int) -> None:
        try:
            _check(_lib().inotify_rm_watch(self.fd, wd))
        except OSError as error:
            if error.errno != errno.EINVAL:  # already gone (IN_IGNORED on its way)
                raise

    def read(self) -> list[Event]:
        """The events queued now (empty if none)."""
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return []
        return list(parse(data))


def parse(data: bytes) -> Iterator[Event]:
    """Events from the bytes of one read(2); a truncated tail is dropped."""
    pos = 0
    while pos + _EVENT.size <= len(data):
        wd, mask, cookie, length = _EVENT.unpack_from(data, pos)
        pos += _EVENT.size
        name = data[pos:pos + length].split(b"\0", 1)[0]
        pos += length
        yield Event(wd, mask, cookie, name)
