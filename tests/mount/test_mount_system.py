"""The real side effects of qvm-mount-folder: the socketpair channel and friends."""

from __future__ import annotations

import os
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from qsf_mount import system
from qsf_mount.system import RealSystem, SocketChannel

PY = sys.executable


def test_channel_is_socketpairs_and_read_line_never_reads_past_the_line() -> None:
    script = ("import os, stat, sys\n"
              "kinds = [stat.S_ISSOCK(os.fstat(fd).st_mode) for fd in (0, 1)]\n"
              "line = sys.stdin.buffer.readline()\n"
              "sys.stdout.buffer.write(b'ok rw\\n' + repr(kinds).encode() + b'|' + line)\n")
    channel = SocketChannel([PY, "-c", script])
    try:
        channel.send(b"L2E=\n")
        assert channel.read_line(64) == b"ok rw"
        time.sleep(0.2)
        rest = os.read(channel.read_fd, 100)  # what follows is left for the backend
        assert rest == b"[True, True]|L2E=\n"
        assert channel.wait() == 0
    finally:
        channel.abort()


def test_read_line_limits_and_eof() -> None:
    channel = SocketChannel([PY, "-c", "import sys; sys.stdout.write('x' * 100)"])
    try:
        assert channel.read_line(10) is None
    finally:
        channel.abort()
    channel = SocketChannel([PY, "-c", "import sys; sys.stdout.write('no newline')"])
    try:
        assert channel.read_line(64) is None
        assert channel.wait() == 0
    finally:
        channel.abort()


def test_silent_server_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "REPLY_TIMEOUT", 0.3)
    channel = SocketChannel([PY, "-c", "import time; time.sleep(30)"])
    started = time.monotonic()
    try:
        assert channel.read_line(64) is None
    finally:
        monkeypatch.setattr(system, "ABORT_GRACE", 0.2)
        channel.abort()
    assert time.monotonic() - started < 5


def test_abort_ends_a_process_that_ignores_eof_and_sigterm(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    monkeypatch.setattr(system, "ABORT_GRACE", 0.3)
    ready = tmp_path / "ready"
    script = ("import signal, time, pathlib\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              f"pathlib.Path({str(ready)!r}).touch()\n"
              "time.sleep(60)\n")
    channel = SocketChannel([PY, "-c", script])
    while not ready.exists():
        time.sleep(0.02)
    started = time.monotonic()
    channel.abort()
    assert time.monotonic() - started < 5
    assert channel.wait() == 128 + 9


def test_detach_closes_our_ends_only() -> None:
    channel = SocketChannel([PY, "-c", "import sys; sys.exit(0 if sys.stdin.read() == '' else 3)"])
    fds = (channel.read_fd, channel.write_fd)
    for fd in fds:
        assert stat.S_ISSOCK(os.fstat(fd).st_mode)
    channel.detach()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert channel.wait() == 0


def test_call_keeps_at_most_limit_bytes() -> None:
    result = RealSystem().call([PY, "-c", "import sys; d = sys.stdin.read(); print(d * 50)"],
                               b"abc", 10)
    assert result.stdout == b"abcabcabca"


def test_mount_point_problems(tmp_path: Path) -> None:
    real = RealSystem()
    (tmp_path / "file").touch()
    assert real.mount_point_problem(str(tmp_path / "missing")) == "does not exist"
    assert real.mount_point_problem(str(tmp_path / "file")) == "is not a directory"
    assert real.mount_point_problem("/proc") == "is already a mount point"
    assert real.mount_point_problem(str(tmp_path)) is None


def test_socketpair_not_pipe_for_selinux() -> None:
    """Fedora's SELinux denied the kernel reading the client's FIFOs: never pipes."""
    channel = SocketChannel([PY, "-c", "pass"])
    try:
        for fd in (channel.read_fd, channel.write_fd):
            with socket.socket(fileno=os.dup(fd)) as sock:
                assert sock.family == socket.AF_UNIX
    finally:
        channel.abort()
