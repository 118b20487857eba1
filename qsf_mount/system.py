"""The side effects of qvm-mount-folder, behind one interface that tests fake."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import qsf_kmount
from qsf_mount import persistent, startup

ABORT_GRACE: Final = 3.0  # seconds qrexec-client-vm gets to end after each step of abort()
# The server qube answers after asking dom0 (which it gives 60 s): no answer in
# this time is no answer at all.
REPLY_TIMEOUT: Final = 90.0


@dataclass(frozen=True, slots=True)
class Completed:
    status: int  # exit status; 128 + signal when killed
    stdout: bytes


class Channel(Protocol):
    """A running `qrexec-client-vm SERVER SERVICE` joined to us by socketpairs."""

    @property
    def read_fd(self) -> int: ...

    @property
    def write_fd(self) -> int: ...

    def send(self, data: bytes) -> None: ...

    def read_line(self, limit: int) -> bytes | None:
        """One line without its newline; None at EOF, past `limit` bytes or on timeout."""
        ...

    def wait(self) -> int:
        """The exit status of qrexec-client-vm (128 + signal when killed)."""
        ...

    def detach(self) -> None:
        """Close our ends; the process lives on, held by the backend."""
        ...

    def abort(self) -> None:
        """Kill the process and close our ends."""
        ...


class System(Protocol):
    def find_program(self, name: str) -> str | None: ...

    def mount_point_problem(self, path: str) -> str | None:
        """Why `path` cannot be a mount point, or None."""
        ...

    def call(self, argv: Sequence[str], data: bytes, limit: int) -> Completed:
        """Run argv with `data` on stdin; at most `limit` bytes of its stdout kept."""
        ...

    def open_channel(self, argv: Sequence[str]) -> Channel: ...

    def run(self, argv: Sequence[str], pass_fds: Sequence[int] = ()) -> int: ...

    def read_mounts(self) -> str: ...

    def kernel_mount(self) -> KernelMount | None:
        """The kernel backend's mount function, if this qube has one."""
        ...

    def kernel_unmount(self, mountpoint: str) -> None:
        """Unmount a v9fs share (through sudo when not root); raises OSError."""
        ...

    def kernel_availability(self) -> tuple[bool, str]:
        """Whether the kernel backend can mount here, and why (not)."""
        ...

    def share_store(self) -> Path:
        """The file of the shares recorded for start-up."""
        ...

    def sleep(self, seconds: float) -> None: ...

    def notify(self, summary: str, body: str) -> None:
        """Tell the user in a desktop notification (or only log when there is no desktop)."""
        ...


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class SocketChannel:
    """qrexec-client-vm with stdin and stdout on two AF_UNIX socketpairs."""

    def __init__(self, argv: Sequence[str]) -> None:
        to_service, self._service_stdin = socket.socketpair()
        self._service_stdout, from_service = socket.socketpair()
        try:
            # Its own session and no stdio of ours: the share outlives this
            # command and its terminal. Its failures are reported by exit status.
            self._process = subprocess.Popen(
                list(argv),
                stdin=self._service_stdin.fileno(),
                stdout=self._service_stdout.fileno(),
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            for sock in (to_service, self._service_stdin, self._service_stdout, from_service):
                sock.close()
            raise
        self._service_stdin.close()
        self._service_stdout.close()
        self._to_service = to_service
        self._from_service = from_service

    @property
    def read_fd(self) -> int:
        return self._from_service.fileno()

    @property
    def write_fd(self) -> int:
        return self._to_service.fileno()

    def send(self, data: bytes) -> None:
        self._to_service.sendall(data)

    def read_line(self, limit: int) -> bytes | None:
        # select(), not a socket timeout: the fd's flags are shared with the backend.
        deadline = time.monotonic() + REPLY_TIMEOUT
        line = bytearray()
        while len(line) < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_service], [], [], remaining)[0]:
                return None
            byte = self._from_service.recv(1)  # never past the line: 9P follows it
            if not byte:
                return None
            if byte == b"\n":
                return bytes(line)
            line += byte
        return None

    def wait(self) -> int:
        try:
            return _status(self._process.wait(timeout=REPLY_TIMEOUT))
        except subprocess.TimeoutExpired:
            self._process.kill()
            return _status(self._process.wait())

    def detach(self) -> None:
        self._to_service.close()
        self._from_service.close()

    def abort(self) -> None:
        """Close our ends; qrexec-client-vm then sees EOF and ends (else SIGTERM, SIGKILL)."""
        self.detach()
        for stop in (None, self._process.terminate, self._process.kill):
            if stop is not None:
                stop()
            try:
                self._process.wait(timeout=ABORT_GRACE)
                return
            except subprocess.TimeoutExpired:
                continue
        self._process.wait()


class RealSystem:
    def find_program(self, name: str) -> str | None:
        # A console script of the same installation first, then PATH.
        sibling = Path(sys.executable).parent / name
        if sibling.is_file() and os.access(sibling, os.X_OK):
            return str(sibling)
        return shutil.which(name)

    def mount_point_problem(self, path: str) -> str | None:
        if not os.path.lexists(path):
            return "does not exist"
        if not os.path.isdir(path):
            return "is not a directory"
        if os.path.ismount(path):
            return "is already a mount point"
        return None

    def call(self, argv: Sequence[str], data: bytes, limit: int) -> Completed:
        with subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE) as process:
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(data)
                process.stdin.close()
            except BrokenPipeError:
                pass
            output = process.stdout.read(limit)
            process.stdout.close()  # anything beyond `limit` is dropped
            return Completed(_status(process.wait()), output)

    def open_channel(self, argv: Sequence[str]) -> Channel:
        return SocketChannel(argv)

    def run(self, argv: Sequence[str], pass_fds: Sequence[int] = ()) -> int:
        return _status(subprocess.run(list(argv), pass_fds=tuple(pass_fds), check=False).returncode)

    def kernel_mount(self) -> KernelMount | None:
        return qsf_kmount.mount

    def kernel_availability(self) -> tuple[bool, str]:
        return qsf_kmount.availability()

    def kernel_unmount(self, mountpoint: str) -> None:
        qsf_kmount.unmount(mountpoint)

    def read_mounts(self) -> str:
        with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as table:
            return table.read()

    def share_store(self) -> Path:
        return persistent.store_path()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def notify(self, summary: str, body: str) -> None:
        startup.desktop_notifier(self.find_program)(summary, body)


class KernelMount(Protocol):
    def __call__(
        self,
        *,
        rfd: int,
        wfd: int,
        mountpoint: str,
        source: str,
        read_only: bool,
        options: str,
    ) -> None: ...
