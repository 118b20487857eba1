"""Reading the mount table: which qsf shares are mounted in this qube."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Final

SCHEME: Final = "qvm://"
FUSE_TYPE: Final = "fuse.qsf"
_OCTAL: Final = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Share:
    source: str  # qvm://SERVER/FOLDER
    mountpoint: str
    fstype: str

    @property
    def is_fuse(self) -> bool:
        return self.fstype.startswith("fuse")


def unescape(field: str) -> str:
    """A /proc/mounts field with its octal escapes (\\040 for a space...) undone."""
    return _OCTAL.sub(lambda match: chr(int(match[1], 8)), field)


def shares(mount_table: str) -> list[Share]:
    """The qsf shares of a /proc/self/mounts text, in mount order."""
    found = []
    for line in mount_table.splitlines():
        fields = line.split(" ")
        if len(fields) < 3:
            continue
        source, mountpoint, fstype = (unescape(field) for field in fields[:3])
        if source.startswith(SCHEME):
            found.append(Share(source, mountpoint, fstype))
    return found


def source_name(server: str, folder: bytes) -> str:
    """qvm://SERVER/FOLDER, the folder %-escaped where mount options would break."""
    return SCHEME + server + urllib.parse.quote(folder, safe="/-._~+@:=")
