"""Real programs on the mount give what they give on a local directory.

Each test does the same work in a fresh directory of the mount and of a local
directory and compares the resulting trees (types, modes, sizes, contents,
link targets, link counts and, where the work sets them, times).
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import support
from fuse_mounts import Mount, Server, assert_gone, make_workdir, start_mount, unmount

pytestmark = pytest.mark.fuse

Snapshot = dict[bytes, tuple[object, ...]]


@dataclass
class Pair:
    """The same fresh directory on the mount and locally."""

    mount: Mount
    remote: Path
    local: Path

    def both(self) -> tuple[Path, Path]:
        return self.remote, self.local


# ignoreqv: diod's files are not versioned; without it MAP_SHARED is refused (direct_io).
MOUNTS = [
    pytest.param((Server("qsf"), ()), id="qsf"),
    pytest.param((Server("diod"), ("ignoreqv",)), id="diod", marks=pytest.mark.diod),
    pytest.param((Server("qsf"), ("writeback",)), id="qsf-writeback"),
]


@pytest.fixture(scope="module", params=MOUNTS)
def module_mount(request: pytest.FixtureRequest) -> Iterator[Mount]:
    server: Server
    options: tuple[str, ...]
    server, options = request.param
    workdir = make_workdir()
    mount = start_mount(server, workdir, options)
    try:
        yield mount
    finally:
        servers = mount.server_pids()
        unmount(mount)
        assert_gone(servers)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pair(module_mount: Mount, request: pytest.FixtureRequest) -> Iterator[Pair]:
    name = request.node.name.replace("[", "-").replace("]", "")
    remote = module_mount.mnt / name
    local = module_mount.mnt.parent / "local" / name
    remote.mkdir()
    local.mkdir(parents=True)
    yield Pair(module_mount, remote, local)
    shutil.rmtree(local, ignore_errors=True)


def snapshot(root: Path, *, times: bool = False) -> Snapshot:
    """Everything below root that a program could tell apart (but inode numbers)."""
    result: Snapshot = {}
    inodes: dict[int, bytes] = {}
    base = bytes(root)
    for directory, dirnames, filenames in os.walk(base):
        for name in sorted(dirnames) + sorted(filenames):
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, base)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            detail: object = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    detail = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            # Hard links: name the first path of the same inode.
            first = inodes.setdefault(st.st_ino, rel) if not stat.S_ISDIR(st.st_mode) else rel
            entry: tuple[object, ...] = (
                kind, stat.S_IMODE(st.st_mode), st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                detail, st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0, first,
            )
            if times and not stat.S_ISLNK(st.st_mode):
                entry += (st.st_mtime_ns,)
            result[rel] = entry
    return result


def sh(script: str, cwd: Path, *, user: bool = False) -> str:
    argv = ["sh", "-ec", script]
    result = subprocess.run(support.as_user(argv) if user else argv, cwd=cwd,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode(errors="replace")


def same_work(pair: Pair, script: str, *, times_of: tuple[str, ...] = ()) -> None:
    """Run script in both; the trees must match, and times too below times_of."""
    remote_out = sh(script, pair.remote)
    local_out = sh(script, pair.local)
    assert remote_out == local_out
    assert snapshot(pair.remote) == snapshot(pair.local)
    for sub in times_of:
        assert snapshot(pair.remote / sub, times=True) == snapshot(pair.local / sub, times=True)


def make_source(root: Path) -> None:
    """A small tree with every kind of thing cp -a and tar carry."""
    (root / "d1" / "d2" / "d3").mkdir(parents=True)
    for size, name in ((0, "empty"), (1, "one"), (4095, "page-1"), (65543, "d1/odd"),
                       (1 << 20, "d1/d2/mib")):
        (root / name).write_bytes(os.urandom(size))
    (root / "script").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "script", 0o755)
    os.chmod(root / "one", 0o600)
    os.chmod(root / "d1" / "d2", 0o700)
    os.symlink("d1/odd", root / "rel-link")
    os.symlink("/nowhere/at/all", root / "dangling")
    os.link(root / "one", root / "d1" / "hard-one")
    os.mkfifo(root / "fifo")
    (root / "with space & 'quotes'").write_bytes(b"q")
    for index, path in enumerate(sorted(root.rglob("*"))):
        os.utime(path, ns=(1_600_000_000_000_000_000 + index, 1_500_000_000_123_456_789 + index),
                 follow_symlinks=False)


def test_cp_a_and_tar(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    make_source(source)
    same_work(pair, f"cp -a {source} copy", times_of=("copy",))
    same_work(pair, "tar -cf archive.tar -C copy . && mkdir x && tar -xpf archive.tar -C x",
              times_of=("x",))
    assert snapshot(pair.remote / "x") == snapshot(source)  # tar keeps whole seconds only
    # The export holds the same thing the client shows.
    export = pair.mount.export / pair.remote.name
    assert snapshot(export / "copy", times=True) == snapshot(pair.remote / "copy", times=True)


def test_find_and_ls(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    make_source(source)
    for root in pair.both():
        sh(f"cp -a {source} tree", root)
    listing = "find tree -printf '%y %m %s %n %l %P\\n' | sort; ls -lR --time-style=+ tree | wc -l"
    remote, local = (sh(listing, root) for root in pair.both())
    assert remote == local


def test_shell_work(pair: Pair) -> None:
    same_work(pair, """
        mkdir -p a/b c
        echo one > a/b/f
        mv a/b/f c/g
        mv a/b c/b
        ln c/g c/hard
        ln -s ../c/g a/soft
        cat a/soft
        chmod 640 c/g
        chmod 1777 a
        echo more >> c/g
        mv c/g c/renamed
        rm c/hard
        stat -c '%s %h %a' c/renamed
        mkdir t
        touch -d '2001-02-03 04:05:06.789' c/renamed t/new
        touch -m -d '1999-12-31 23:59:59' a/soft
        cp -p c/renamed t/kept
        stat -c '%y' c/renamed t/new
    """, times_of=("t",))


def _rename_over_open(root: Path) -> list[object]:
    (root / "a").write_bytes(b"old contents")
    (root / "b").write_bytes(b"new")
    with open(root / "a", "rb") as f:
        os.rename(root / "b", root / "a")
        return [f.read(), (root / "a").read_bytes(), sorted(os.listdir(root))]


def _unlink_open(root: Path) -> list[object]:
    fd = os.open(root / "u", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"abc")
        os.unlink(root / "u")
        os.pwrite(fd, b"Z", 1)
        return [os.pread(fd, 10, 0), os.path.exists(root / "u"), os.listdir(root)]
    finally:
        os.close(fd)


def _append(root: Path) -> list[object]:
    first = os.open(root / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    second = os.open(root / "log", os.O_WRONLY | os.O_APPEND)
    try:
        for index in range(20):
            os.write(first if index % 2 else second, b"%02d;" % index)
        os.pwrite(first, b"X", 0)  # O_APPEND: pwrite appends too (Linux)
    finally:
        os.close(first)
        os.close(second)
    return [(root / "log").read_bytes()]


def _sparse(root: Path) -> list[object]:
    with open(root / "sparse", "wb") as f:
        f.truncate(1 << 30)
        f.seek((1 << 30) - 3)
        f.write(b"end")
    with open(root / "sparse", "rb") as f:
        f.seek(123_456_789)
        middle = f.read(4096)
        f.seek(-3, os.SEEK_END)
        return [os.stat(root / "sparse").st_size, middle == bytes(4096), f.read()]


def _beyond_4gib(root: Path) -> list[object]:
    fd = os.open(root / "huge", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"far away", 5 << 30)
        os.pwrite(fd, b"near", (4 << 30) - 2)
        return [os.fstat(fd).st_size, os.pread(fd, 8, 5 << 30), os.pread(fd, 4, (4 << 30) - 2),
                os.pread(fd, 4, 1 << 32)]
    finally:
        os.close(fd)


def _mmap(root: Path) -> list[object]:
    (root / "m").write_bytes(bytes(range(256)) * 64)
    with open(root / "m", "r+b") as f, mmap.mmap(f.fileno(), 0) as view:
        head = view[:4]
        view[0:5] = b"HELLO"
        view[-3:] = b"END"
        view.flush()
    with open(root / "m", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as view:
        return [head, view[:6], view[-4:], (root / "m").read_bytes()[:5]]


@pytest.mark.parametrize(
    "work",
    [_rename_over_open, _unlink_open, _append, _sparse, _beyond_4gib, _mmap],
    ids=lambda work: work.__name__.strip("_"),
)
def test_file_semantics(pair: Pair, work: Callable[[Path], list[object]]) -> None:
    assert work(pair.remote) == work(pair.local)
    if work is _mmap:
        export = pair.mount.export / pair.remote.name / "m"
        assert export.read_bytes()[:5] == b"HELLO" and export.read_bytes()[-3:] == b"END"


def test_ten_thousand_entries(pair: Pair) -> None:
    export = pair.mount.export / pair.remote.name
    names = {f"entry-{index:05d}-{'x' * (index % 40)}" for index in range(10_000)}
    for name in names:
        os.close(os.open(export / name, os.O_CREAT | os.O_WRONLY, 0o644))
    assert set(os.listdir(pair.remote)) == names
    assert sh("ls -l | tail -n +2 | wc -l", pair.remote).strip() == "10000"
    # A directory read in small steps (seekdir/telldir through readdir offsets).
    seen = set()
    with os.scandir(pair.remote) as entries:
        for entry in entries:
            seen.add(entry.name)
            assert entry.is_file(follow_symlinks=False)
    assert seen == names
    shutil.rmtree(pair.remote)
    assert not export.exists()


def test_as_unprivileged_user(module_mount: Mount) -> None:
    """Another user (uid 1000) cannot enter root's mount: no allow_other, FUSE's own rule."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    result = subprocess.run(support.as_user(["ls", str(module_mount.mnt)]),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "Permission denied" in result.stderr


def test_errors_are_the_servers(pair: Pair) -> None:
    for root in pair.both():
        with pytest.raises(OSError) as error:
            os.open(root / "missing" / "x", os.O_RDONLY)
        assert error.value.errno == errno.ENOENT
        (root / "file").write_bytes(b"")
        with pytest.raises(OSError) as error:
            os.mkdir(root / "file" / "sub")
        assert error.value.errno == errno.ENOTDIR
        with pytest.raises(OSError) as error:
            os.open(root / ("n" * 256), os.O_CREAT | os.O_WRONLY)
        assert error.value.errno == errno.ENAMETOOLONG
