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
from fuse_mounts import (
    Mount,
    Server,
    abort_connection,
    assert_gone,
    is_mounted,
    start_mount,
    unmount,
)

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


def test_unmount_ends_the_client_while_another_namespace_holds_the_mount(
    server: Server, workdir: Path
) -> None:
    """Regression (issue 11): `fusermount -u` succeeded, the client served on for ever.

    A process that made a private mount namespace while the folder was mounted
    (unshare, a systemd service with PrivateTmp) holds a copy of the mount: the
    kernel ends the FUSE session only with the last copy. The client now
    watches its own namespace's mount table.
    """
    mount = start_mount(server, workdir)
    servers = mount.server_pids()
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                               "sleep", "600"])
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{holder.pid}/ns/mnt").exists() or (
                os.readlink(f"/proc/{holder.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")):
            assert time.monotonic() < deadline, "unshare did not start"
            time.sleep(0.02)
        (mount.mnt / "f").write_bytes(b"x")
        started = time.monotonic()
        unmount(mount)
        assert time.monotonic() - started < 5
        assert mount.process.returncode == 0
        assert_gone(servers)
    finally:
        holder.kill()
        holder.wait()
        unmount(mount, check=False)


# Every operation against a server qube that is killed (SIGKILL) or frozen
# (SIGSTOP) while the operation waits on it. "Long" ones (a listing of many
# files, a writeback of many pages) are under way when the fault comes; the
# others send their first request to a server already gone or frozen.
OPERATIONS = {
    "stat": ("stat $M/file", False),
    "ls": ("ls -l $M", False),
    "cat": ("cat $M/file", False),
    "write-fsync": ("dd if=/dev/zero of=$M/new bs=64k count=4 conv=fsync", False),
    "mkdir": ("mkdir $M/dir2", False),
    "mv": ("mv $M/file $M/moved", False),
    "symlink": ("ln -s file $M/link", False),
    "rm": ("rm -f $M/file", False),
    "chmod": ("chmod 600 $M/file", False),
    "truncate": ("truncate -s 10 $M/file", False),
    "getfattr": ("getfattr -d $M/file", False),
    "setfattr": ("setfattr -n user.a -v b $M/file", False),
    "df": ("df $M", False),
    "long-listing": ("ls -lR $M/many", True),
    "writeback": ("dd if=/dev/zero of=$M/big bs=1M count=400 conv=fsync", True),
}
FAULT_TIMEOUT = 1.0


def _cases() -> list[object]:
    """Every operation and fault against qsf-server; against diod the long ones (the
    rest of diod's behind `slow`: the client's side of a dead or frozen server
    does not depend on which server it was)."""
    cases: list[object] = []
    for operation, (_, long) in OPERATIONS.items():
        for fault in ("kill", "stop"):
            cases.append(pytest.param("qsf", operation, fault, id=f"qsf-{operation}-{fault}"))
            marks = [pytest.mark.diod] + ([] if long else [pytest.mark.slow])
            cases.append(pytest.param("diod", operation, fault, marks=marks,
                                      id=f"diod-{operation}-{fault}"))
    return cases


@pytest.mark.parametrize(("server_name", "operation", "fault"), _cases())
def test_operation_with_the_server_gone(
    workdir: Path, server_name: str, operation: str, fault: str
) -> None:
    server = Server(server_name)
    command, long = OPERATIONS[operation]
    export = workdir / "export"
    (export / "many").mkdir(parents=True)
    (export / "file").write_bytes(b"data\n")
    if long:
        for i in range(1500):
            (export / "many" / f"entry-{i:05}").touch()
    mount = start_mount(server, workdir, (f"request_timeout={FAULT_TIMEOUT}",))
    pid = _server_pid(mount)
    signum = signal.SIGKILL if fault == "kill" else signal.SIGSTOP
    try:
        env = {**os.environ, "M": str(mount.mnt)}
        if not long:
            os.kill(pid, signum)
        started = time.monotonic()
        program = subprocess.Popen(["sh", "-c", command], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        if long:
            time.sleep(0.3)
            os.kill(pid, signum)
        # A call waits at most the timeout, its flush as long again; then EIO at once.
        limit = 3 * FAULT_TIMEOUT + 5
        try:
            _, stderr = program.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            program.kill()
            try:
                program.communicate(timeout=2)
            except subprocess.TimeoutExpired:
                abort_connection(mount.mnt)  # in D state: free it, then fail
            pytest.fail(f"{command} still running {limit} s after the server {fault}ed")
        assert program.returncode != 0 or long, f"{command} succeeded: {stderr}"
        assert time.monotonic() - started < limit
        assert mount.alive()
        unmount(mount)
        assert mount.process.returncode == 0
        assert "Traceback" not in mount.log_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        unmount(mount, check=False)
        assert_gone([pid])
