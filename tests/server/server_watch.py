"""An inotify watch for the tests: proof that nothing touched a directory."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

IN_ALL_EVENTS = 0xFFF
IN_NONBLOCK = os.O_NONBLOCK


class Inotify:
    """A non-blocking inotify watch on some directories; `events()` drains it."""

    def __init__(self, paths: list[Path]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(IN_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        for path in paths:
            assert libc.inotify_add_watch(self.fd, os.fsencode(path), IN_ALL_EVENTS) >= 0

    def events(self) -> list[tuple[int, bytes]]:
        found = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return found
            pos = 0
            while pos < len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, pos)
                name = data[pos + 16:pos + 16 + length].rstrip(b"\0")
                found.append((mask, name))
                pos += 16 + length

    def close(self) -> None:
        os.close(self.fd)
