"""qsf-fuse mounted for real: every operation, the CLI's life cycle, coherence."""

from __future__ import annotations

import errno
import mmap
import os
import shlex
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import support
from fuse_mounts import Mount, Server, assert_gone, start_mount, unmount

pytestmark = pytest.mark.fuse


def test_files_and_directories(mounted: Mount) -> None:
    mnt, export = mounted.mnt, mounted.export
    (mnt / "dir").mkdir(0o750)
    assert stat.S_IMODE((export / "dir").stat().st_mode) == 0o750
    data = os.urandom(300_000)
    (mnt / "dir" / "file").write_bytes(data)
    assert (export / "dir" / "file").read_bytes() == data
    assert (mnt / "dir" / "file").read_bytes() == data
    assert sorted(os.listdir(mnt)) == ["dir"]
    assert os.listdir(mnt / "dir") == ["file"]

    os.rename(mnt / "dir" / "file", mnt / "moved")
    assert (export / "moved").read_bytes() == data
    assert not (export / "dir" / "file").exists()
    # The renamed file's inode keeps working under its new name.
    with open(mnt / "moved", "rb") as f:
        assert f.read(10) == data[:10]

    os.symlink("moved", mnt / "link")
    assert os.readlink(mnt / "link") == "moved"
    assert os.readlink(export / "link") == "moved"
    assert (mnt / "link").read_bytes() == data

    os.link(mnt / "moved", mnt / "hard")
    assert os.stat(mnt / "hard").st_ino == os.stat(mnt / "moved").st_ino
    assert os.stat(mnt / "moved").st_nlink == 2
    assert os.stat(export / "moved").st_ino == os.stat(export / "hard").st_ino

    os.chmod(mnt / "moved", 0o640)
    assert stat.S_IMODE(os.stat(export / "moved").st_mode) == 0o640
    os.truncate(mnt / "moved", 1000)
    assert os.stat(export / "moved").st_size == 1000
    os.utime(mnt / "moved", ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(export / "moved")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    assert os.stat(mnt / "moved").st_mtime_ns == 2_000_000_456

    os.unlink(mnt / "hard")
    assert not (export / "hard").exists()
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "hard")
    with pytest.raises(OSError) as error:
        os.rmdir(mnt / "moved")
    assert error.value.errno == errno.ENOTDIR
    (mnt / "dir" / "x").write_bytes(b"")
    with pytest.raises(OSError) as error:
        os.rmdir(mnt / "dir")
    assert error.value.errno == errno.ENOTEMPTY
    os.unlink(mnt / "dir" / "x")
    os.rmdir(mnt / "dir")
    assert not (export / "dir").exists()
    with pytest.raises(FileExistsError):
        os.mkdir(mnt / "moved")


def test_special_files_and_statfs(mounted: Mount) -> None:
    mnt, export = mounted.mnt, mounted.export
    os.mkfifo(mnt / "fifo", 0o600)
    assert stat.S_ISFIFO(os.stat(export / "fifo").st_mode)
    assert stat.S_ISFIFO(os.stat(mnt / "fifo").st_mode)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(mnt / "sock"))
    finally:
        sock.close()
    assert stat.S_ISSOCK(os.stat(export / "sock").st_mode)
    with pytest.raises(PermissionError):
        os.mknod(mnt / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(mnt / "plain", stat.S_IFREG | 0o644)
    assert stat.S_ISREG(os.stat(export / "plain").st_mode)
    ours, theirs = os.statvfs(mnt), os.statvfs(export)
    assert ours.f_blocks * ours.f_frsize == theirs.f_blocks * theirs.f_frsize
    assert ours.f_namemax == 255


def test_open_file_operations(mounted: Mount) -> None:
    mnt, export = mounted.mnt, mounted.export
    fd = os.open(mnt / "f", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"0123456789")
        os.ftruncate(fd, 4)
        os.fchmod(fd, 0o604)
        os.fsync(fd)
        os.unlink(mnt / "f")
        # Unlinked while open: the open file still works, on both sides.
        os.pwrite(fd, b"xy", 4)
        assert os.pread(fd, 100, 0) == b"0123xy"
        if mounted.server.name != "diod":  # diod stats by path: gone once unlinked
            assert os.fstat(fd).st_size == 6
    finally:
        os.close(fd)
    assert not (export / "f").exists()
    with pytest.raises(FileExistsError):
        fd = os.open(mnt / "g", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
        os.open(mnt / "g", os.O_CREAT | os.O_EXCL | os.O_WRONLY)


def test_extended_attributes(mounted: Mount) -> None:
    mnt, export = mounted.mnt, mounted.export
    (mnt / "f").write_bytes(b"x")
    os.setxattr(mnt / "f", "user.color", b"blue")
    assert os.getxattr(export / "f", "user.color") == b"blue"
    assert os.getxattr(mnt / "f", "user.color") == b"blue"
    big = os.urandom(3000)  # ext4 keeps at most a block of xattrs per file
    os.setxattr(mnt / "f", "user.big", big)
    assert os.getxattr(mnt / "f", "user.big") == big
    assert {"user.color", "user.big"} <= set(os.listxattr(mnt / "f"))
    os.removexattr(mnt / "f", "user.color")
    assert "user.color" not in os.listxattr(export / "f")
    with pytest.raises(OSError) as error:
        os.getxattr(mnt / "f", "user.color")
    assert error.value.errno == errno.ENODATA


def test_open_with_o_trunc_truncates_on_the_server(mounted: Mount) -> None:
    """`>` onto a longer file: the server's copy is cut too (the kernel sends
    O_TRUNC in the open and truncates only its own view)."""
    mnt, export = mounted.mnt, mounted.export
    (export / "f").write_bytes(b"a" * 8192)
    assert (mnt / "f").stat().st_size == 8192
    subprocess.run(["sh", "-c", f"echo b > {shlex.quote(str(mnt / 'f'))}"], check=True)
    assert (export / "f").read_bytes() == b"b\n"
    assert (mnt / "f").read_bytes() == b"b\n"
    fd = os.open(mnt / "f", os.O_RDWR | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)
    assert (export / "f").stat().st_size == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can set trusted.* and security.*")
def test_server_qube_namespaces_are_not_supported(mounted: Mount) -> None:
    """security.* and trusted.* are the server qube's (its SELinux labels and
    file capabilities): not listed, not read, not written through the mount."""
    mnt, export = mounted.mnt, mounted.export
    (export / "f").write_bytes(b"x")
    os.setxattr(export / "f", "security.qsf-test", b"label")
    os.setxattr(export / "f", "trusted.qsf-test", b"t")
    os.setxattr(export / "f", "user.colour", b"red")
    assert os.listxattr(mnt / "f") == ["user.colour"]
    for name in ("security.qsf-test", "security.selinux", "trusted.qsf-test"):
        for call, args in ((os.getxattr, ()), (os.setxattr, (b"new",)), (os.removexattr, ())):
            with pytest.raises(OSError) as error:
                call(mnt / "f", name, *args)
            assert error.value.errno == errno.EOPNOTSUPP
    assert os.getxattr(export / "f", "security.qsf-test") == b"label"
    assert os.getxattr(export / "f", "trusted.qsf-test") == b"t"
    # ls -l shows the file as a plain one (no "." for an SELinux context).
    listing = subprocess.run(["ls", "-l", str(mnt / "f")], capture_output=True, text=True,
                             check=True).stdout
    assert listing.startswith("-rw-r--r-- ")


def test_rename_flags_are_refused(mounted: Mount) -> None:
    (mounted.mnt / "a").write_bytes(b"a")
    (mounted.mnt / "b").write_bytes(b"b")
    result = subprocess.run(["mv", "--exchange", "a", "b"], cwd=mounted.mnt,
                            capture_output=True, text=True)
    if "unrecognized option" in result.stderr:
        # coreutils without --exchange: ask renameat2 directly.
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.renameat2(-100, str(mounted.mnt / "a").encode(), -100,
                            str(mounted.mnt / "b").encode(), 2)  # RENAME_EXCHANGE
        assert rc == -1 and ctypes.get_errno() == errno.EINVAL
    else:
        assert result.returncode != 0
    assert (mounted.export / "a").read_bytes() == b"a"


def test_names_are_bytes(mounted: Mount) -> None:
    names = [b"with space", b"new\nline", b"\xff\xfe-not-utf8", b"tab\there", "é".encode()]
    for name in names:
        path = os.path.join(bytes(mounted.mnt), name)
        with open(path, "wb") as f:
            f.write(name)
    assert sorted(os.listdir(bytes(mounted.export))) == sorted(names)
    assert sorted(os.listdir(bytes(mounted.mnt))) == sorted(names)
    for name in names:
        with open(os.path.join(bytes(mounted.mnt), name), "rb") as f:
            assert f.read() == name


def test_coherence_with_changes_on_the_server(mounted: Mount) -> None:
    """The client sees files changed in the export directly within the timeout (1 s)."""
    mnt, export = mounted.mnt, mounted.export
    (export / "f").write_bytes(b"version one")
    assert (mnt / "f").read_bytes() == b"version one"
    with open(mnt / "f", "rb") as f:
        assert f.read() == b"version one"

    def eventually(check: object, what: str) -> None:
        deadline = time.monotonic() + 3.0
        while True:
            try:
                if callable(check) and check():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the client did not see: {what}")
            time.sleep(0.1)

    time.sleep(0.05)
    (export / "f").write_bytes(b"second version, longer")
    eventually(lambda: (mnt / "f").read_bytes() == b"second version, longer", "a change")
    # Same size, new content: only mtime (and qid.version) tell.
    time.sleep(0.02)
    (export / "f").write_bytes(b"SECOND VERSION, LONGER")
    eventually(lambda: (mnt / "f").read_bytes() == b"SECOND VERSION, LONGER",
               "a same-size change")
    (export / "new").write_bytes(b"new")
    eventually(lambda: "new" in os.listdir(mnt) and (mnt / "new").read_bytes() == b"new",
               "a new file")
    os.unlink(export / "new")
    eventually(lambda: not (mnt / "new").exists() and "new" not in os.listdir(mnt),
               "a deleted file")
    (export / "d").mkdir()
    eventually(lambda: (mnt / "d").is_dir(), "a new directory")
    os.chmod(export / "f", 0o600)
    eventually(lambda: stat.S_IMODE(os.stat(mnt / "f").st_mode) == 0o600, "a chmod")


def test_cached_data_is_kept_while_unchanged(server: Server, workdir: Path) -> None:
    """Reopening an unchanged file keeps its pages; the data stays right either way."""
    mount = start_mount(server, workdir, ("timeout=5", "ignoreqv"))
    try:
        data = os.urandom(1 << 20)
        (mount.export / "f").write_bytes(data)
        for _ in range(3):
            assert (mount.mnt / "f").read_bytes() == data
        changed = os.urandom(1 << 20)
        (mount.export / "f").write_bytes(changed)
        os.utime(mount.export / "f", ns=(1, 1))
        deadline = time.monotonic() + 8
        while (mount.mnt / "f").read_bytes() != changed:
            assert time.monotonic() < deadline, "stale data after the server changed the file"
            time.sleep(0.2)
    finally:
        unmount(mount)


def test_background_mode_returns_when_live(server: Server, workdir: Path) -> None:
    """Without --foreground: exit 0 once mounted; fusermount -u ends the client and the server."""
    support.need_fuse()
    export, mnt = workdir / "export", workdir / "mnt"
    export.mkdir()
    mnt.mkdir()
    (export / "hello").write_bytes(b"hi")
    command, options = server.command(export)
    ours, theirs = socket.socketpair()
    server_process = subprocess.Popen(
        shlex.split(command),
        stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.DEVNULL,
    )
    theirs.close()
    try:
        fd = ours.fileno()
        result = subprocess.run(
            [support.venv_program("qsf-fuse"), "-o", ",".join([*options, "fsname=qvm://srv/f"]),
             "--rfd", str(fd), "--wfd", str(fd), str(mnt)],
            pass_fds=(fd,), capture_output=True, text=True, timeout=30,
        )
        ours.close()
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mnt)
        assert (mnt / "hello").read_bytes() == b"hi"
        line = next(line for line in Path("/proc/mounts").read_text().splitlines()
                    if line.split()[1] == str(mnt))
        assert line.split()[0] == "qvm://srv/f" and line.split()[2] == "fuse.qsf"
        subprocess.run(["fusermount", "-u", str(mnt)], check=True)
        # The client exits and closes the channel: the server sees EOF and exits 0.
        assert server_process.wait(10) == 0
    finally:
        ours.close()
        if os.path.ismount(mnt):
            subprocess.run(["fusermount", "-u", "-z", str(mnt)], check=False)
        if server_process.poll() is None:
            server_process.kill()
            server_process.wait()


def test_background_mode_reports_failure(workdir: Path) -> None:
    support.need_fuse()
    (workdir / "mnt").mkdir()
    result = subprocess.run(
        [support.venv_program("qsf-fuse"), "--exec", "/nonexistent/server --flag",
         str(workdir / "mnt")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "/nonexistent/server" in result.stderr
    assert not os.path.ismount(workdir / "mnt")
    # A server that refuses the attach (diod wants aname = its export).
    diod = support.need_program("diod")
    command = shlex.join([diod, "-f", "-n", "-c", "/dev/null", "-L", "stderr",
                          "-e", str(workdir), "--rfdno", "0", "--wfdno", "1"])
    result = subprocess.run(
        [support.venv_program("qsf-fuse"), "-o", "aname=/elsewhere", "--exec", command,
         str(workdir / "mnt")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "refused" in result.stderr
    assert not os.path.ismount(workdir / "mnt")


def test_usage_errors(workdir: Path) -> None:
    program = support.venv_program("qsf-fuse")
    for argv in (
        [str(workdir)],
        ["--rfd", "0", str(workdir)],
        ["-o", "bogus", "--exec", "true", str(workdir)],
        ["-o", "dev", "--exec", "true", str(workdir)],
        ["-o", "msize=12", "--exec", "true", str(workdir)],
    ):
        result = subprocess.run([program, *argv], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, (argv, result.stderr)
    result = subprocess.run([program, "--help"], capture_output=True, text=True, timeout=30)
    assert "local to this client" in result.stdout


def test_unprivileged_client(workdir: Path) -> None:
    """The client and the programs as the qube's user (uid 1000), as in a qube."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to uid 1000")
    mount = start_mount(Server("diod"), workdir, as_user=True)
    try:
        script = (
            "set -e; cd \"$1\"; mkdir d; echo hello > d/f; cat d/f; mv d/f d/g;"
            " ln -s g d/s; cat d/s; chmod 600 d/g; ls -l d | wc -l;"
            # Permissions hold for the owner too (the server checks; access(2) agrees).
            " chmod 000 d/g; if cat d/g 2>/dev/null; then exit 7; fi;"
            " if test -r d/g; then exit 8; fi; chmod 600 d/g; test -r d/g; rm -r d"
        )
        result = subprocess.run(support.as_user(["sh", "-c", script, "sh", str(mount.mnt)]),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr + mount.log_text()
        assert result.stdout.split() == ["hello", "hello", "3"]
        for line in Path("/proc/mounts").read_text().splitlines():
            if line.split()[1] == str(mount.mnt):
                assert "user_id=1000" in line
    finally:
        servers = mount.server_pids()
        unmount(mount)
        assert_gone(servers)


def test_unversioned_files_bypass_the_page_cache(mounted: Mount) -> None:
    """diod sends qid.version 0: such files get direct I/O (no page cache), as with v9fs.

    Direct I/O is visible to programs in one way: the kernel refuses a shared
    writable mmap of such a file (ENODEV). qsf-server versions its files.
    """
    (mounted.export / "f").write_bytes(b"x" * 8192)
    with open(mounted.mnt / "f", "r+b") as f:
        if mounted.server.name == "diod":
            with pytest.raises(OSError) as error:
                mmap.mmap(f.fileno(), 0)
            assert error.value.errno == errno.ENODEV
        else:
            with mmap.mmap(f.fileno(), 0) as view:
                view[:1] = b"y"
    # Every read of an unversioned file goes to the server: a change shows at once.
    fd = os.open(mounted.mnt / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, 1, 0) in (b"x", b"y")
        (mounted.export / "f").write_bytes(b"z" * 8192)
        if mounted.server.name == "diod":
            assert os.pread(fd, 1, 0) == b"z"
    finally:
        os.close(fd)
