"""The fid table: reference-counted fids, changed only by the event loop.

A request holds its fids (`FidTable.hold`) for as long as it uses their
descriptors, worker threads included. Tclunk and Tremove detach a fid from the
table at once; its descriptors close when the last request holding it lets go,
so a clunk racing a read can never close an fd under it, nor let a number be
reused for another file while a thread still uses it (the QEMU CVE-2021-20181
class). A fid never changes what it points at: a walk in place or a Tlcreate
puts a new Fid under the same number and detaches the old one.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from qsf_p9.messages import Dirent, QsfDirent

from .fs import Place


@dataclass(slots=True)
class XattrWrite:
    """A fid turned by Txattrcreate into the value being written; set at clunk."""

    name: bytes
    value: bytearray
    flags: int
    written: int = 0


@dataclass(slots=True, eq=False)
class Fid:
    """One client fid. `fd` is the node's O_PATH descriptor (None for an xattr read fid)."""

    fd: int | None
    st: os.stat_result | None
    place: Place | None
    open_fd: int | None = None
    open_flags: int = 0
    # An open directory's listing (with . and ..); entry i has offset i + 1.
    dir_snapshot: list[Dirent] | None = None
    plus_snapshot: list[QsfDirent] | None = None  # the same for Tqsfreaddir
    xattr_data: bytes | None = None  # the value or name list a Txattrwalk fetched
    xattr_write: XattrWrite | None = None
    memory: int = 0  # bytes of buffered data charged to the table's memory budget
    users: int = 0
    detached: bool = False
    closed: bool = field(default=False)

    @property
    def is_path(self) -> bool:
        return self.fd is not None and self.xattr_write is None

    def close(self) -> None:
        """Close every descriptor (called once, when detached and unused)."""
        if self.closed:
            return
        self.closed = True
        for fd in (self.open_fd, self.fd):
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)
        self.open_fd = self.fd = None


class FidTable:
    """Fid number -> Fid, bounded by `limit` entries and `memory_limit` bytes of
    buffered data (directory listings, extended attribute values)."""

    def __init__(self, limit: int, memory_limit: int = 256 << 20) -> None:
        self.limit = limit
        self.memory_limit = memory_limit
        self.memory = 0
        self._fids: dict[int, Fid] = {}

    def __len__(self) -> int:
        return len(self._fids)

    def __contains__(self, number: int) -> bool:
        return number in self._fids

    def get(self, number: int) -> Fid:
        fid = self._fids.get(number)
        if fid is None:
            raise OSError(errno.EBADF, f"unknown fid {number}")
        return fid

    @contextmanager
    def hold(self, *numbers: int) -> Iterator[list[Fid]]:
        """Look the fids up and keep their descriptors open until the block ends."""
        fids = [self.get(number) for number in numbers]
        for fid in fids:
            fid.users += 1
        try:
            yield fids
        finally:
            for fid in fids:
                self._release(fid)

    def add(self, number: int, fid: Fid) -> None:
        """Put a new fid under an unused number; on failure `fid` is closed."""
        if number in self._fids:
            fid.close()
            raise OSError(errno.EBADF, f"fid {number} is in use")
        if len(self._fids) >= self.limit:
            fid.close()
            raise OSError(errno.EMFILE, f"more than {self.limit} fids")
        if self.memory + fid.memory > self.memory_limit:
            fid.close()
            raise OSError(errno.ENOMEM, "fids buffer too much data")
        self._fids[number] = fid
        self.memory += fid.memory

    def replace(self, number: int, fid: Fid) -> None:
        """Put `fid` under `number` in place of the fid there, which is detached."""
        old = self._fids.get(number)
        if old is None:
            fid.close()
            raise OSError(errno.EBADF, f"unknown fid {number}")
        if self.memory - old.memory + fid.memory > self.memory_limit:
            fid.close()
            raise OSError(errno.ENOMEM, "fids buffer too much data")
        self._fids[number] = fid
        self.memory += fid.memory
        self._detach(old)

    def remove(self, number: int) -> Fid:
        """Take fid `number` out of the table (clunk); it closes once unused."""
        fid = self._fids.pop(number, None)
        if fid is None:
            raise OSError(errno.EBADF, f"unknown fid {number}")
        self._detach(fid)
        return fid

    def charge(self, fid: Fid, memory: int) -> None:
        """Account `memory` bytes now buffered by `fid` (replacing its previous charge)."""
        if fid.detached:
            return  # its memory goes with the request that still holds it
        if self.memory - fid.memory + memory > self.memory_limit:
            raise OSError(errno.ENOMEM, "fids buffer too much data")
        self.memory += memory - fid.memory
        fid.memory = memory

    def clear(self) -> None:
        """Detach every fid (Tversion, end of connection)."""
        fids = list(self._fids.values())
        self._fids.clear()
        for fid in fids:
            self._detach(fid)

    def _detach(self, fid: Fid) -> None:
        if not fid.detached:
            self.memory -= fid.memory
        fid.detached = True
        if fid.users == 0:
            fid.close()

    @staticmethod
    def _release(fid: Fid) -> None:
        fid.users -= 1
        if fid.users == 0 and fid.detached:
            fid.close()
