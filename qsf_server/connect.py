"""qsf.ConnectToFolder+FP, the server qube's service.

The client sends one base64 line naming a folder. Whatever it claims, this
service asks dom0 (`qsf.QueryFolderAuthorization+FP`) whether grant FP lets
that client have that folder, and only then answers `ok ro|rw` and execs
qsf-server on the folder over the same stdin/stdout; otherwise it answers
`error denied|missing|notdir|internal` and exits 0 (125-127 stay qrexec's).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Final

QUBE_NAME_RE: Final = re.compile(rb"\A[a-zA-Z][a-zA-Z0-9_-]{0,30}\Z")
FINGERPRINT_RE: Final = re.compile(rb"\A[0-9a-f]{32}\Z")
MAX_PATH: Final = 4096
MAX_PATH_LINE: Final = 4 * ((MAX_PATH + 2) // 3) + 1
MAX_DOM0_REPLY: Final = 64
DOM0_TIMEOUT: Final = 60.0
QUERY_SERVICE: Final = "qsf.QueryFolderAuthorization"
GRANT_REPLIES: Final = {b"ok ro\n": "ro", b"ok rw\n": "rw"}


class Refused(Exception):
    """Why the connection is refused: one of denied, missing, notdir, internal."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def read_line(fd: int, limit: int) -> bytes:
    """One line of at most `limit` bytes, read a byte at a time (9P follows it)."""
    untrusted_line = bytearray()
    while len(untrusted_line) < limit:
        byte = os.read(fd, 1)
        if not byte:
            raise Refused("denied", "end of input before the folder line ended")
        if byte == b"\n":
            return bytes(untrusted_line)
        untrusted_line += byte
    raise Refused("denied", "folder line too long")


def decode_folder(untrusted_line: bytes) -> bytes:
    """The folder of a base64 line: absolute, normalised, no NUL, <= 4096 bytes."""
    try:
        untrusted_path = base64.b64decode(untrusted_line, validate=True)
    except (binascii.Error, ValueError):
        raise Refused("denied", "folder line is not base64") from None
    if base64.b64encode(untrusted_path) != untrusted_line:
        raise Refused("denied", "folder line is not canonical base64")
    if len(untrusted_path) > MAX_PATH or b"\0" in untrusted_path:
        raise Refused("denied", "folder too long or with NUL")
    if not untrusted_path.startswith(b"/"):
        raise Refused("denied", "folder not absolute")
    if untrusted_path != b"/" and any(
        part in (b"", b".", b"..") for part in untrusted_path[1:].split(b"/")
    ):
        raise Refused("denied", "folder not normalised")
    return untrusted_path


def ask_dom0(fingerprint: str, client: str, folder: bytes) -> str:
    """The granted mode (ro or rw) from dom0, or Refused."""
    program = shutil.which("qrexec-client-vm")
    if program is None:
        raise Refused("internal", "qrexec-client-vm not found")
    request = client.encode("ascii") + b"\n" + base64.b64encode(folder) + b"\n"
    try:
        with subprocess.Popen(
            [program, "dom0", f"{QUERY_SERVICE}+{fingerprint}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        ) as process:
            assert process.stdin is not None and process.stdout is not None
            watchdog = threading.Timer(DOM0_TIMEOUT, process.kill)
            watchdog.start()
            try:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.write(request)
                    process.stdin.close()
                reply = process.stdout.read(MAX_DOM0_REPLY + 1)
                status = process.wait()
            finally:
                watchdog.cancel()
    except OSError as error:
        raise Refused("internal", f"cannot run qrexec-client-vm: {error.strerror}") from None
    if status == 0 and reply in GRANT_REPLIES:
        return GRANT_REPLIES[reply]
    if status == 0 and reply.startswith(b"deny "):
        raise Refused("denied", f"dom0 refused: {reply[:MAX_DOM0_REPLY]!r}")
    raise Refused("internal", f"dom0 query failed (exit {status}, reply {reply[:40]!r})")


def check_folder(folder: bytes) -> None:
    """Refused(missing|notdir) unless the folder is a directory here."""
    try:
        fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise Refused("missing", "no such folder") from None
        if error.errno in (errno.ENOTDIR, errno.ELOOP):
            raise Refused("notdir", "not a directory") from None
        raise Refused("internal", f"cannot open folder: {error.strerror}") from None
    os.close(fd)


def authorized_folder(stdin: int, environ: Mapping[str, str]) -> tuple[bytes, str, str]:
    """(folder, mode, client) that dom0 granted to this call, or Refused."""
    untrusted_fingerprint = environ.get("QREXEC_SERVICE_ARGUMENT", "").encode(
        "utf-8", "surrogateescape"
    )
    untrusted_client = environ.get("QREXEC_REMOTE_DOMAIN", "").encode("utf-8", "surrogateescape")
    if not FINGERPRINT_RE.match(untrusted_fingerprint):
        raise Refused("denied", "the service argument is not a fingerprint")
    if not QUBE_NAME_RE.match(untrusted_client):
        raise Refused("internal", "QREXEC_REMOTE_DOMAIN is not a qube name")
    fingerprint = untrusted_fingerprint.decode("ascii")
    client = untrusted_client.decode("ascii")
    folder = decode_folder(read_line(stdin, MAX_PATH_LINE))
    mode = ask_dom0(fingerprint, client, folder)  # before revealing whether it exists
    check_folder(folder)
    return folder, mode, client


def server_argv(folder: bytes, mode: str, client: str) -> list[bytes]:
    """`python -m qsf_server [--read-only] --client CLIENT -- FOLDER` with this interpreter.

    With --client the server lists the export and notifies the user (start, release).
    """
    python = os.fsencode(sys.executable)
    read_only = [b"--read-only"] if mode == "ro" else []
    named = [b"--client", client.encode("ascii")]
    return [python, b"-m", b"qsf_server", *read_only, *named, b"--", folder]


def _write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def main() -> int:
    try:
        folder, mode, client = authorized_folder(0, os.environ)
        if importlib.util.find_spec("qsf_server.__main__") is None:
            raise Refused("internal", "qsf_server is not installed")
    except Refused as refusal:
        print(f"qsf.ConnectToFolder: refused ({refusal.reason}): {refusal}", file=sys.stderr)
        try:
            _write(1, f"error {refusal.reason}\n".encode("ascii"))
        except OSError:
            return 1
        return 0
    try:
        _write(1, f"ok {mode}\n".encode("ascii"))
    except OSError:
        return 1
    argv = server_argv(folder, mode, client)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main())
