"""Writeback caching (`-o writeback`): write(2) is answered from the page cache,
and a write that never reaches the server is never lost silently. When the server
qube dies or freezes with data still in the client's page cache, the fsync(2) or
close(2) that follows fails; what fsync acknowledged is in the export.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from fuse_mounts import Mount, Server, assert_gone, start_mount, unmount

pytestmark = pytest.mark.fuse

REQUEST_TIMEOUT = 1.0
DATA = os.urandom(1 << 20)


def _mount(server: Server, workdir: Path, *, as_user: bool = False) -> Mount:
    # ignoreqv: diod does not version files, and unversioned files bypass the page cache.
    options = ("writeback", "ignoreqv", f"request_timeout={REQUEST_TIMEOUT}")
    return start_mount(server, workdir, options, as_user=as_user)


@contextlib.contextmanager
def _cleanly_mounted(server: Server, workdir: Path, *, as_user: bool = False) -> Iterator[Mount]:
    """A writeback mount that must end cleanly: unmounted, client and server gone."""
    mount = _mount(server, workdir, as_user=as_user)
    try:
        yield mount
        servers = mount.server_pids()
        unmount(mount)
        assert_gone(servers)
    finally:
        unmount(mount, check=False)


def _dirty_file(mount: Mount) -> int:
    """A file open for writing whose written data is only in the client's page cache."""
    fd = os.open(mount.mnt / "lost", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    assert os.write(fd, DATA) == len(DATA)
    # The kernel keeps dirty pages for dirty_expire (30 s): none has reached the server,
    # which shows that write(2) was answered by the cache.
    assert (mount.export / "lost").stat().st_size < len(DATA)
    return fd


def _fault(mount: Mount, fault: str) -> int:
    pids = mount.server_pids()
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    return pids[0]


def _resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # killed by the client at unmount
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("fault", ["kill", "stop"])
@pytest.mark.parametrize("call", ["fsync", "close"])
def test_a_write_lost_with_the_server_fails_fsync_or_close(
    server: Server, workdir: Path, call: str, fault: str
) -> None:
    mount = _mount(server, workdir)
    pid = None
    try:
        fd = _dirty_file(mount)
        pid = _fault(mount, fault)
        started = time.monotonic()
        with pytest.raises(OSError) as error:
            if call == "fsync":
                os.fsync(fd)
            else:
                os.close(fd)
        assert error.value.errno in (errno.EIO, errno.ETIMEDOUT), error.value
        # A call waits at most the timeout, its flush as long again; then EIO at once.
        assert time.monotonic() - started < 3 * REQUEST_TIMEOUT + 5
        if call == "fsync":
            with contextlib.suppress(OSError):
                os.close(fd)
        assert mount.alive()
        unmount(mount)
    finally:
        if pid is not None:
            _resume(pid)
        unmount(mount, check=False)
        assert_gone([pid] if pid is not None else [])


def test_what_fsync_acknowledged_is_on_the_server(server: Server, workdir: Path) -> None:
    mount = _mount(server, workdir)
    try:
        fd = _dirty_file(mount)
        os.fsync(fd)
        assert (mount.export / "lost").read_bytes() == DATA
        _fault(mount, "kill")
        assert (mount.export / "lost").read_bytes() == DATA
        with contextlib.suppress(OSError):  # nothing left to write: close may succeed
            os.close(fd)
    finally:
        unmount(mount, check=False)


def test_close_writes_back_and_appends_land_at_the_end(server: Server, workdir: Path) -> None:
    with _cleanly_mounted(server, workdir) as mount:
        with open(mount.mnt / "log", "wb") as f:
            f.write(b"first\n")
        assert (mount.export / "log").read_bytes() == b"first\n"  # close wrote it back
        with open(mount.mnt / "log", "ab") as f:
            f.write(b"second\n")
        assert (mount.export / "log").read_bytes() == b"first\nsecond\n"
        # A write-only open may still need partial pages read: the mount opens it
        # read-write on the server, so a small write into the middle keeps the rest.
        fd = os.open(mount.mnt / "log", os.O_WRONLY)
        try:
            os.pwrite(fd, b"F", 0)
        finally:
            os.close(fd)
        assert (mount.export / "log").read_bytes() == b"First\nsecond\n"


def test_write_only_files_as_the_qube_user(server: Server, workdir: Path) -> None:
    """A file its owner may only write (mode 0200): opened write-only on the
    server after read-write is refused, so writes still reach it."""
    with _cleanly_mounted(server, workdir, as_user=True) as mount:
        script = (
            "import os, sys\n"
            "path = sys.argv[1]\n"
            "fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o200)\n"
            "os.write(fd, b'x' * 8192)\n"
            "os.close(fd)\n"
            "fd = os.open(path, os.O_WRONLY | os.O_TRUNC)\n"
            "os.write(fd, b'y' * 4096)\n"
            "os.fsync(fd)\n"
            "os.close(fd)\n"
        )
        run = subprocess.run(
            support.as_user([sys.executable, "-c", script, str(mount.mnt / "secret")]),
            capture_output=True, text=True, timeout=30,
        )
        assert run.returncode == 0, run.stderr
        assert (mount.export / "secret").read_bytes() == b"y" * 4096
        assert (mount.export / "secret").stat().st_mode & 0o777 == 0o200


def test_syncfs_after_removing_a_written_file(server: Server, workdir: Path) -> None:
    """The kernel writes back the times it kept of a file removed since: that is
    no error (it used to fail the next `sync -f` of the whole mount with ENOENT)."""
    with _cleanly_mounted(server, workdir) as mount:
        for index in range(3):
            path = mount.mnt / f"gone-{index}"
            path.write_bytes(DATA[:10000])
            path.unlink()
        subprocess.run(["sync", "-f", str(mount.mnt)], check=True)
