"""The text handshake of the qsf services: bounded reading and validation of lines.

Every value here comes from another qube until proven otherwise: variables hold
`untrusted_` names until a function of this module has validated them.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Final

# Qube names as ARCHITECTURE.md fixes them (at most 31 characters).
QUBE_NAME_RE: Final = re.compile(rb"\A[a-zA-Z][a-zA-Z0-9_-]{0,30}\Z")
# A grant's fingerprint: 128 random bits as 32 lowercase hex digits.
FINGERPRINT_RE: Final = re.compile(rb"\A[0-9a-f]{32}\Z")
# Disposable qubes are named disp + digits.
DISPOSABLE_RE: Final = re.compile(r"\Adisp[0-9]+\Z")

MAX_PATH: Final = 4096
MAX_NAME_LINE: Final = 32  # 31 characters and the newline
MAX_PATH_LINE: Final = 4 * ((MAX_PATH + 2) // 3) + 1  # base64 of MAX_PATH bytes and "\n"
MAX_MODE_LINE: Final = 3

MODES: Final = ("ro", "rw")


class InvalidInput(Exception):
    """A line from another qube was malformed; the message says how."""


def read_line(fd: int, limit: int) -> bytes:
    """Read one line of at most `limit` bytes (newline included) from `fd`.

    Reads a byte at a time so that nothing after the newline is consumed: the
    bytes that follow may belong to another program (qsf-server after the
    handshake). Returns the line without its newline.
    """
    untrusted_line = bytearray()
    while len(untrusted_line) < limit:
        byte = os.read(fd, 1)
        if not byte:
            raise InvalidInput("end of input before the end of a line")
        if byte == b"\n":
            return bytes(untrusted_line)
        untrusted_line += byte
    raise InvalidInput(f"line longer than {limit} bytes")


def qube_name(untrusted_name: bytes | str) -> str:
    """A validated qube name."""
    if isinstance(untrusted_name, str):
        untrusted_name = untrusted_name.encode("utf-8", "surrogateescape")
    if not QUBE_NAME_RE.match(untrusted_name):
        raise InvalidInput("malformed qube name")
    return untrusted_name.decode("ascii")


def fingerprint(untrusted_fingerprint: bytes | str) -> str:
    """A validated fingerprint (32 lowercase hex digits)."""
    if isinstance(untrusted_fingerprint, str):
        untrusted_fingerprint = untrusted_fingerprint.encode("utf-8", "surrogateescape")
    if not FINGERPRINT_RE.match(untrusted_fingerprint):
        raise InvalidInput("malformed fingerprint")
    return untrusted_fingerprint.decode("ascii")


def mode(untrusted_mode: bytes) -> str:
    """`ro` or `rw`."""
    if untrusted_mode == b"ro":
        return "ro"
    if untrusted_mode == b"rw":
        return "rw"
    raise InvalidInput("access mode must be ro or rw")


def folder_path(untrusted_path: bytes) -> bytes:
    """A validated folder: absolute, normalised, no NUL, no `.` or `..`, <= 4096 bytes."""
    if len(untrusted_path) > MAX_PATH:
        raise InvalidInput("path too long")
    if not untrusted_path.startswith(b"/"):
        raise InvalidInput("path not absolute")
    if b"\0" in untrusted_path:
        raise InvalidInput("NUL in path")
    if untrusted_path == b"/":
        return untrusted_path
    components = untrusted_path[1:].split(b"/")
    for component in components:
        if component in (b"", b".", b".."):
            raise InvalidInput("path not normalised")
    return untrusted_path


def decode_path(untrusted_line: bytes) -> bytes:
    """The folder carried by one base64 line (strict alphabet, canonical padding)."""
    try:
        untrusted_path = base64.b64decode(untrusted_line, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("malformed base64") from None
    if base64.b64encode(untrusted_path) != untrusted_line:
        raise InvalidInput("non-canonical base64")
    return folder_path(untrusted_path)


def encode_path(path: bytes) -> bytes:
    """One base64 line (with its newline) for a path."""
    return base64.b64encode(folder_path(path)) + b"\n"


def is_within(folder: bytes, granted: bytes) -> bool:
    """Whether `folder` is `granted` or lies below it (both validated)."""
    if granted == b"/":
        return True
    return folder == granted or folder.startswith(granted + b"/")


def is_disposable(name: str) -> bool:
    """Whether a (validated) qube name is that of a disposable qube."""
    return DISPOSABLE_RE.match(name) is not None
