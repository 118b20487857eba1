"""The extended attribute read-ahead: `ls -l` asks every listed file for the same
names, one at a time; asked of the next files together, absent ones come from the
cache (for the attribute timeout, and never after a write through the mount)."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_mounts import Mount, Server, assert_gone, start_mount, unmount

pytestmark = pytest.mark.fuse

NAME = "user.qsf-test"
FILES = 20


@pytest.fixture
def listed(server: Server, workdir: Path) -> Iterator[tuple[Mount, list[str]]]:
    """A mount caching attributes for 30 s, of FILES files just listed (readdirplus)."""
    export = workdir / "export"
    export.mkdir()
    for index in range(FILES):
        (export / f"file-{index:02d}").write_bytes(b"x")
    mount = start_mount(server, workdir, ("timeout=30",))
    try:
        yield mount, os.listdir(mount.mnt)  # in the server's order, as the read-ahead goes
    finally:
        servers = mount.server_pids()
        unmount(mount)
        assert_gone(servers)


def absent(path: Path) -> bool:
    try:
        os.getxattr(path, NAME)
    except OSError as error:
        assert error.errno == errno.ENODATA
        return True
    return False


def test_absence_is_read_ahead_and_dropped_by_a_write(listed: tuple[Mount, list[str]]) -> None:
    mount, names = listed
    mnt, export = mount.mnt, mount.export
    assert absent(mnt / names[0])
    time.sleep(0.5)  # the read-ahead of the following files ends meanwhile
    # Set behind the mount's back: the absence read ahead before still answers,
    # which shows that the mount did ask the server for it already.
    os.setxattr(export / names[10], NAME, b"behind")
    assert absent(mnt / names[10])
    # A write through the mount is seen at once, and so is its removal.
    os.setxattr(mnt / names[12], NAME, b"through")
    assert os.getxattr(mnt / names[12], NAME) == b"through"
    assert os.getxattr(export / names[12], NAME) == b"through"
    os.removexattr(mnt / names[12], NAME)
    assert absent(mnt / names[12])


def test_present_values_are_read_whole(listed: tuple[Mount, list[str]]) -> None:
    mount, names = listed
    mnt, export = mount.mnt, mount.export
    values = {name: os.urandom(1000) for name in names[1::3]}
    for name, value in values.items():
        os.setxattr(export / name, NAME, value)
    for name in names:
        if name in values:
            assert _eventually_value(mnt / name) == values[name]
        else:
            assert absent(mnt / name)


def _eventually_value(path: Path) -> bytes:
    """The value, once a change behind the mount shows: at once with plain 9P (it was
    never asked), within the change event's way with qsf's extensions (the listing
    said the file had no attributes)."""
    deadline = time.monotonic() + 2.0
    while True:
        try:
            return os.getxattr(path, NAME)
        except OSError as error:
            if error.errno != errno.ENODATA or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def test_ls_l_lists_every_file(listed: tuple[Mount, list[str]]) -> None:
    mount, names = listed
    output = subprocess.run(["ls", "-l", str(mount.mnt)], capture_output=True, text=True,
                            check=True).stdout
    assert sorted(line.split()[-1] for line in output.splitlines()[1:]) == sorted(names)
    # diod logs its refusal of the qsf version offered first (docs/PROTOCOL.md).
    log = [line for line in mount.log_text().lower().splitlines()
           if not line.startswith("diod: version: unsupported version")]
    assert "error" not in "\n".join(log)
