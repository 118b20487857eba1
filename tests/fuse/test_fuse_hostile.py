"""A server that sends bad replies: the call fails, the mount and the process live on."""

from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import support
from fuse_mounts import (
    Mount,
    Server,
    is_mounted,
    run_on_mount,
    unmount,
    wait_for_mount,
)

from qsf_fuse import convert
from qsf_fuse.client import BadReply
from qsf_p9 import messages as m

pytestmark = pytest.mark.fuse

HOSTILE = Path(__file__).with_name("hostile_server.py")


def test_bad_replies_fail_only_their_call(workdir: Path) -> None:
    support.need_fuse()
    mnt = workdir / "mnt"
    mnt.mkdir()
    log = workdir / "client.log"
    command = shlex.join([sys.executable, str(HOSTILE)])
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [support.venv_program("qsf-fuse"), "--foreground", "-o", "request_timeout=5",
             "--exec", command, str(mnt)],
            stdout=log_file, stderr=log_file, env={**os.environ, "PYTHONPATH": str(support.REPO)})
    mount = Mount(workdir, mnt, process, Server("hostile"), log)
    try:
        wait_for_mount(mount)
        assert os.stat(mnt / "ok").st_size == 5
        for name in ("wrong-type", "too-many-qids", "bad-type", "bad-time"):
            with pytest.raises(OSError) as error:
                os.stat(mnt / name)
            assert error.value.errno == errno.EIO, name
            # The connection and the mount go on.
            assert os.stat(mnt / "ok").st_size == 5
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "missing")
        # Regression (issue 11): an errno the kernel refuses in a FUSE reply (512 or
        # more) left the program waiting for ever, in D state, and the mount busy.
        for odd in (512, 4095, 134):
            result = run_on_mount(["stat", str(mnt / f"errno-{odd}")], mnt, 10)
            assert "Input/output error" in result.stderr, result.stderr
        # A broken frame: the connection is over, every call fails at once.
        with pytest.raises(OSError) as error:
            os.stat(mnt / "garbage")
        assert error.value.errno == errno.EIO
        with pytest.raises(OSError) as error:
            os.stat(mnt / "another")
        assert error.value.errno == errno.EIO
        assert mount.alive()
        assert "Traceback" not in mount.log_text()
    finally:
        unmount(mount)
    assert not is_mounted(mnt)
    assert process.returncode == 0


def test_hostile_attributes_are_refused() -> None:
    def rgetattr(mode: int, nsec: int = 0) -> m.Rgetattr:
        return m.Rgetattr(0x7FF, m.Qid(0, 1, 2), mode, 0, 0, 1, 0, 1 << 70, 1 << 40, 0,
                          1 << 62, nsec, 0, 0, 0, 0, 0, 0, 0, 0)

    attrs = convert.entry_attributes(rgetattr(0o100644), 7, 1.0)
    assert attrs.st_size == convert.INT64_MAX and attrs.st_ino == 7
    assert attrs.st_blksize == 1 << 20
    for bad_mode in (0o170644, 0o000644, 0o1100644):
        with pytest.raises(BadReply):
            convert.entry_attributes(rgetattr(bad_mode), 7, 1.0)


def test_open_flags_map_bit_by_bit() -> None:
    assert convert.open_flags(os.O_RDONLY) == 0
    # O_CREAT belongs to Tlcreate; O_TRUNC goes to the server (atomic O_TRUNC).
    assert convert.open_flags(os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC) == (
        0o1 | 0o1000 | 0o2000)
    assert convert.open_flags(os.O_RDWR | os.O_SYNC) & 0o4000000
    for name in (b"", b".", b"..", b"a/b", b"a\0b"):
        with pytest.raises(convert.P9Error):
            convert.check_name(name)
    with pytest.raises(convert.P9Error) as error:
        convert.check_name(b"x" * 256)
    assert error.value.errno == errno.ENAMETOOLONG


def test_no_errno_the_kernel_refuses_reaches_it() -> None:
    """A FUSE error reply outside 1..511 is refused by the kernel: the program would hang."""
    from qsf_fuse.client import P9Error
    from qsf_fuse.core import errno_of

    for odd in (0, 512, 4095, 70000):
        assert errno_of("test", P9Error(odd)) == errno.EIO
    assert errno_of("test", P9Error(errno.ENOENT)) == errno.ENOENT
