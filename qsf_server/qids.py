"""Qids from stat results: unique, stable paths even across devices; non-zero versions."""

from __future__ import annotations

import os
import stat
from typing import Final

from qsf_p9 import constants as c
from qsf_p9.messages import Qid

_DEVICE_SHIFT: Final = 56
_INO_MASK: Final = (1 << _DEVICE_SHIFT) - 1
_MAX_DEVICES: Final = 0xFF  # device index 0xFF marks the overflow numbering


def qid_type(mode: int) -> int:
    if stat.S_ISDIR(mode):
        return c.QTDIR
    if stat.S_ISLNK(mode):
        return c.QTSYMLINK
    return c.QTFILE


def qid_version(st: os.stat_result) -> int:
    """Non-zero (0 disables the Linux page cache) and changing with data and size."""
    version = (st.st_mtime_ns ^ (st.st_size * 0x9E3779B1)) & 0xFFFFFFFF
    version ^= st.st_mtime_ns >> 32 & 0xFFFFFFFF
    return version or 1


class QidMapper:
    """Maps (st_dev, st_ino) to qid.path without aliasing.

    The export's own device keeps st_ino as the path (index 0); each further
    device gets an index in the top 8 bits. An inode number too wide for that
    layout, or a device beyond the 254th, gets a number from a table instead.
    """

    def __init__(self, root_dev: int) -> None:
        self._devices: dict[int, int] = {root_dev: 0}
        self._overflow: dict[tuple[int, int], int] = {}

    def path(self, dev: int, ino: int) -> int:
        index = self._devices.get(dev)
        if index is None and len(self._devices) < _MAX_DEVICES:
            index = self._devices[dev] = len(self._devices)
        if index is not None and ino <= _INO_MASK:
            return index << _DEVICE_SHIFT | ino
        key = (dev, ino)
        number = self._overflow.get(key)
        if number is None:
            number = self._overflow[key] = _MAX_DEVICES << _DEVICE_SHIFT | len(self._overflow)
        return number

    def qid(self, st: os.stat_result) -> Qid:
        return Qid(qid_type(st.st_mode), qid_version(st), self.path(st.st_dev, st.st_ino))
