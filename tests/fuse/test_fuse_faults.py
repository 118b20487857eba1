"""The server dies or stops answering in the middle of a read or a write.

Calls must fail promptly (EIO when the channel is gone, an error after the
request timeout when the server is silent), never hang, and `fusermount -u`
must still work and end the client.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fuse_mounts import Mount, Server, assert_gone, is_mounted, start_mount, unmount

pytestmark = pytest.mark.fuse

REQUEST_TIMEOUT = 2.0
BIG = 512 * 1024 * 1024  # sparse: reading it takes far longer than the test


def _start_io(mount: Mount, kind: str) -> subprocess.Popen[str]:
    if kind == "read":
        with open(mount.export / "big", "wb") as f:
            f.truncate(BIG)
        argv = ["dd", f"if={mount.mnt / 'big'}", "of=/dev/null", "bs=64k", "iflag=direct"]
    else:
        argv = ["dd", "if=/dev/zero", f"of={mount.mnt / 'out'}", "bs=64k",
                f"count={BIG // 65536}", "oflag=direct"]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    # Wait until data flows through the mount.
    target = mount.export / ("out" if kind == "write" else "big")
    deadline = time.monotonic() + 10
    if kind == "write":
        while not target.exists() or target.stat().st_size < 1 << 20:
            assert time.monotonic() < deadline, "the write never started"
            time.sleep(0.05)
    else:
        time.sleep(0.5)
    assert process.poll() is None, process.stderr.read() if process.stderr else ""
    return process


def _server_pid(mount: Mount) -> int:
    pids = mount.server_pids()
    assert len(pids) == 1, pids
    return pids[0]


@pytest.mark.parametrize("kind", ["read", "write"])
def test_server_killed(server: Server, workdir: Path, kind: str) -> None:
    mount = start_mount(server, workdir, (f"request_timeout={REQUEST_TIMEOUT}",))
    try:
        io = _start_io(mount, kind)
        os.kill(_server_pid(mount), signal.SIGKILL)
        started = time.monotonic()
        _, stderr = io.communicate(timeout=10)
        assert io.returncode != 0
        assert time.monotonic() - started < 3, "the call did not fail promptly"
        assert "Input/output error" in stderr or "Transport endpoint" in stderr, stderr
        with pytest.raises(OSError) as error:
            os.listdir(mount.mnt / "subdir-never-seen")
        assert error.value.errno == errno.EIO
        with pytest.raises(OSError) as error:
            os.stat(mount.mnt / "other")
        assert error.value.errno == errno.EIO
        assert mount.alive()
    finally:
        unmount(mount)
    assert mount.process.returncode == 0


@pytest.mark.parametrize("kind", ["read", "write"])
def test_server_stopped(server: Server, workdir: Path, kind: str) -> None:
    mount = start_mount(server, workdir, (f"request_timeout={REQUEST_TIMEOUT}",))
    pid = None
    try:
        io = _start_io(mount, kind)
        pid = _server_pid(mount)
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        _, stderr = io.communicate(timeout=5 * REQUEST_TIMEOUT)
        assert io.returncode != 0, f"the I/O went on with a stopped server: {stderr}"
        assert time.monotonic() - started < 3 * REQUEST_TIMEOUT
        # The server answered neither the call nor its Tflush: the mount now fails at once.
        deadline = time.monotonic() + 3 * REQUEST_TIMEOUT
        while True:
            try:
                os.stat(mount.mnt / "never-seen")
            except OSError as error:
                if error.errno == errno.EIO:
                    break
                assert error.errno in (errno.ETIMEDOUT, errno.ENOENT), error
            assert time.monotonic() < deadline, "the connection was never declared dead"
        started = time.monotonic()
        with pytest.raises(OSError) as failure:
            os.stat(mount.mnt / "another-never-seen")
        assert failure.value.errno == errno.EIO
        assert time.monotonic() - started < 1
        unmount(mount)
        assert mount.process.returncode == 0
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):  # killed by the client at exit
                os.kill(pid, signal.SIGCONT)
        unmount(mount, check=False)
        assert_gone([pid] if pid is not None else [])


def test_client_killed(server: Server, workdir: Path) -> None:
    """kill -9 of qsf-fuse: calls fail (ENOTCONN), never hang; the server sees EOF."""
    mount = start_mount(server, workdir)
    servers = mount.server_pids()
    try:
        (mount.mnt / "f").write_bytes(b"x")
        mount.process.kill()
        mount.process.wait(10)
        started = time.monotonic()
        with pytest.raises(OSError) as error:
            os.stat(mount.mnt / "f")
        assert error.value.errno == errno.ENOTCONN
        assert time.monotonic() - started < 1
        assert_gone(servers)
    finally:
        unmount(mount)


def test_sigterm_unmounts(server: Server, workdir: Path) -> None:
    mount = start_mount(server, workdir)
    servers = mount.server_pids()
    try:
        os.kill(mount.process.pid, signal.SIGTERM)
        assert mount.process.wait(10) == 0
        assert not is_mounted(mount.mnt)
        assert_gone(servers)
    finally:
        unmount(mount, check=False)
