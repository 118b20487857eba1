"""What a mount request is: its fields, their validation, and the exit codes of a mount.

Shared by the command line (cli), the shares recorded for start-up (persistent) and
mount.qvm (helper), so that each checks a request the same way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_DENIED: Final = 3
EXIT_POLICY: Final = 4
EXIT_NO_FOLDER: Final = 5
EXIT_MOUNT_POINT: Final = 6
EXIT_UNREACHABLE: Final = 7
EXIT_NO_BACKEND: Final = 8

BACKENDS: Final = ("auto", "kernel", "fuse")
MAX_PATH: Final = 4096
QUBE_NAME_RE: Final = re.compile(r"\A[a-zA-Z][a-zA-Z0-9_-]{0,30}\Z")
# Options qvm-mount-folder sets itself.
RESERVED_OPTIONS: Final = ("fsname", "subtype")


class Failure(Exception):
    """One line for the user and the exit code that goes with it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class MountRequest:
    server: str
    folder: bytes
    mountpoint: str
    backend: str
    read_only: bool
    options: str
    foreground: bool = False


def normalise_folder(untrusted_folder: str) -> bytes:
    """An absolute folder without empty or `.` components; ValueError otherwise."""
    folder = os.fsencode(untrusted_folder)
    if not folder.startswith(b"/"):
        raise ValueError("FOLDER must be an absolute path")
    if b"\0" in folder:
        raise ValueError("FOLDER contains NUL")
    parts = [part for part in folder.split(b"/") if part not in (b"", b".")]
    if b".." in parts:
        raise ValueError("FOLDER must not contain '..'")
    folder = b"/" + b"/".join(parts)
    if len(folder) > MAX_PATH:
        raise ValueError(f"FOLDER is longer than {MAX_PATH} bytes")
    return folder


def clean_options(options: str) -> str:
    """`options` without empty items; ValueError for a reserved or unprintable one."""
    items = [option for option in options.split(",") if option]
    for option in items:
        if option.split("=", 1)[0] in RESERVED_OPTIONS:
            raise ValueError(f"-o {option}: qvm-mount-folder sets this option itself")
        if not option.isprintable():
            raise ValueError("-o: options must be printable")
    return ",".join(items)


def build(*, server: str, folder: str, mountpoint: str, backend: str = "auto",
          read_only: bool = False, options: str = "", foreground: bool = False) -> MountRequest:
    """A validated MountRequest (MOUNTPOINT made absolute); ValueError says what is wrong."""
    if not QUBE_NAME_RE.match(server):
        raise ValueError(f"{server!r} is not a qube name")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (auto, kernel or fuse)")
    if not mountpoint or "\0" in mountpoint:
        raise ValueError("MOUNTPOINT must be a path")
    return MountRequest(
        server=server,
        folder=normalise_folder(folder),
        mountpoint=os.path.abspath(mountpoint),
        backend=backend,
        read_only=read_only,
        options=clean_options(options),
        foreground=foreground,
    )
