"""qsf-server on the host, the real Linux v9fs client in the guest (6.1 and 6.12).

The guest's uid 1000 (the qube's user) mounts through sudo with qsf_kmount and
works in the share without sudo; every result is checked against the host's
own view of the export. qsf-server runs as uid 1000 too, as a qrexec service
does in a qube.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import support
from conftest import Rig
from guest_rig import Result

pytestmark = pytest.mark.guest

USER = support.QUBE_UID


@dataclass
class Share:
    rig: Rig
    export: Path      # host view
    mnt: str          # guest view
    service: str

    def run(self, argv: list[str], *, uid: int | None = USER, **kwargs: object) -> Result:
        return self.rig.guest.run(argv, uid=uid, **kwargs)  # type: ignore[arg-type]

    def sh(self, script: str, *, uid: int | None = USER, timeout: float = 120) -> Result:
        return self.rig.guest.run(["sh", "-c", script], uid=uid, timeout=timeout,
                                  cwd=self.mnt)

    def py(self, code: str, *, uid: int | None = USER, timeout: float = 120) -> Result:
        return self.rig.guest.run([sys.executable, "-c", textwrap.dedent(code)], uid=uid,
                                  cwd=self.mnt, timeout=timeout)

    @property
    def server(self) -> subprocess.Popen[bytes]:
        (process,) = self.rig.hub.processes[self.service]
        return process


def qsf_server_argv(export: Path, *extra: str) -> list[str]:
    return support.as_user([support.venv_program("qsf-server"), *extra, str(export)])


def mount_share(rig: Rig, export: Path, *server_options: str, options: str = "") -> Share:
    service = rig.new_service(qsf_server_argv(export, *server_options))
    mnt = rig.mountpoint()
    rig.kernel_mount(service, mnt, options=options).check()
    return Share(rig, export, mnt, service)


@pytest.fixture
def share(clean_rig: Rig, export: Path) -> Iterator[Share]:
    yield mount_share(clean_rig, export)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_guest_user_owns_what_it_creates_and_reads_host_files(share: Share) -> None:
    (share.export / "hello").write_bytes(b"from the host\n")
    os.chown(share.export / "hello", USER, USER)
    result = share.sh("cat hello && mkdir d && echo guest > d/f && id -u && stat -c %u:%g d/f")
    assert result.check().out.splitlines() == ["from the host", "1000", "1000:1000"]
    assert (share.export / "d" / "f").read_bytes() == b"guest\n"
    info = os.stat(share.export / "d" / "f")
    assert (info.st_uid, info.st_gid) == (USER, USER)
    assert (share.export / "d").is_dir()


def test_guest_large_file_round_trip(share: Share) -> None:
    share.sh("dd if=/dev/urandom of=big bs=1M count=24 status=none").check()
    guest_sum = share.run(["sha256sum", "big"], cwd=share.mnt).check().out.split()[0]
    assert sha256(share.export / "big") == guest_sum
    assert (share.export / "big").stat().st_size == 24 << 20
    (share.export / "from-host").write_bytes(os.urandom(5 << 20) + b"tail")
    guest_sum = share.run(["sha256sum", "from-host"], cwd=share.mnt).check().out.split()[0]
    assert guest_sum == sha256(share.export / "from-host")


def test_guest_sparse_file(share: Share) -> None:
    share.py("""
        with open("sparse", "wb") as f:
            f.seek(300 << 20)
            f.write(b"end")
            f.seek(1 << 20)
            f.write(b"middle")
    """).check()
    host = share.export / "sparse"
    info = host.stat()
    assert info.st_size == (300 << 20) + 3
    assert info.st_blocks * 512 < 1 << 20  # holes stay holes on the host
    with open(host, "rb") as f:
        f.seek(1 << 20)
        assert f.read(6) == b"middle"
    result = share.py("""
        with open("sparse", "rb") as f:
            f.seek((1 << 20) - 4)
            print(f.read(10).hex())
            f.seek(300 << 20)
            print(f.read())
    """).check()
    assert result.out.splitlines() == ["00000000" + b"middle".hex(), "b'end'"]


def test_guest_rename_and_unlink_while_open(share: Share) -> None:
    result = share.py("""
        import os
        with open("a", "w") as f:
            f.write("one")
        os.rename("a", "b")
        os.mkdir("dir")
        os.rename("b", "dir/c")
        f = open("dir/c", "r+")
        os.unlink("dir/c")
        f.seek(0, 2)
        f.write(" two")
        f.flush()
        f.seek(0)
        print(f.read())
        print(os.fstat(f.fileno()).st_nlink)
        f.close()
        print(sorted(os.listdir(".")), os.listdir("dir"))
    """).check()
    assert result.out.splitlines() == ["one two", "0", "['dir'] []"]
    assert sorted(os.listdir(share.export)) == ["dir"]
    assert os.listdir(share.export / "dir") == []


def test_guest_symlinks_and_hard_links(share: Share) -> None:
    share.sh("echo data > target && ln -s target sym && ln -s /etc/passwd abs "
             "&& ln target hard && mkdir sub && ln -s ../target sub/up").check()
    assert os.readlink(share.export / "sym") == "target"
    assert os.readlink(share.export / "abs") == "/etc/passwd"
    assert os.readlink(share.export / "sub" / "up") == "../target"
    assert os.stat(share.export / "hard").st_ino == os.stat(share.export / "target").st_ino
    assert os.stat(share.export / "target").st_nlink == 2
    out = share.sh("cat sym sub/up hard && readlink abs && stat -c %h target").check().out
    assert out.splitlines() == ["data", "data", "data", "/etc/passwd", "2"]


def test_guest_chmod_chown_utimes(share: Share) -> None:
    share.sh("touch f && chmod 640 f && chown 1000:1000 f "
             "&& touch -m -d '2001-02-03 04:05:06 UTC' f").check()
    info = os.stat(share.export / "f")
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert (info.st_uid, info.st_gid) == (USER, USER)
    assert info.st_mtime == 981173106
    # Giving a file away takes privilege the server (uid 1000) does not have.
    refused = share.run(["chown", "0", "f"], cwd=share.mnt)
    assert refused.rc != 0 and "not permitted" in refused.err
    assert os.stat(share.export / "f").st_uid == USER
    mode = share.run(["stat", "-c", "%a %Y", "f"], cwd=share.mnt).check().out.split()
    assert mode == ["640", "981173106"]


def test_guest_xattrs(share: Share) -> None:
    share.sh("touch f && setfattr -n user.colour -v blue f").check()
    assert os.getxattr(share.export / "f", "user.colour") == b"blue"
    os.setxattr(share.export / "f", "user.shape", b"round")
    out = share.sh("getfattr -n user.shape --only-values f; echo; "
                   "getfattr -d f | grep -c user.").check().out
    assert out.splitlines() == ["round", "2"]
    share.sh("setfattr -x user.colour f").check()
    assert "user.colour" not in os.listxattr(share.export / "f")


@pytest.mark.timeout(900)  # a few thousand round trips through a TCG guest
def test_guest_thousand_entry_directories(share: Share) -> None:
    share.py("""
        import os
        os.mkdir("many")
        for i in range(1000):
            open(f"many/file-{i:04d}", "w").close()
    """, timeout=300).check()
    assert len(os.listdir(share.export / "many")) == 1000
    host_dir = share.export / "from-host"
    host_dir.mkdir()
    for i in range(1000):
        (host_dir / f"h{i}").touch()
    out = share.sh("ls from-host | wc -l && ls many | grep -c file-", timeout=300).check().out
    assert out.split() == ["1000", "1000"]


def test_guest_mmap_read_and_shared_write(share: Share) -> None:
    (share.export / "m").write_bytes(b"a" * 8192 + b"b" * 8192)
    os.chown(share.export / "m", USER, USER)
    result = share.py("""
        import mmap
        with open("m", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            print(m[8190:8194])
            m[0:5] = b"HELLO"
            m[12000:12003] = b"XYZ"
            m.flush()
    """).check()
    assert result.out.strip() == "b'aabb'"
    data = (share.export / "m").read_bytes()
    assert data[:5] == b"HELLO" and data[12000:12003] == b"XYZ" and len(data) == 16384


def test_guest_read_only_export_gives_erofs(clean_rig: Rig, export: Path) -> None:
    (export / "f").write_bytes(b"keep")
    os.chown(export / "f", USER, USER)
    ro = mount_share(clean_rig, export, "--read-only")
    assert ro.run(["cat", "f"], cwd=ro.mnt).check().out == "keep"
    for script in ("echo x > f", "touch new", "mkdir d", "rm f"):
        result = ro.sh(script)
        assert result.rc != 0 and "Read-only file system" in result.err, script
    assert os.listdir(export) == ["f"] and (export / "f").read_bytes() == b"keep"


def test_guest_umount_ends_the_server(share: Share) -> None:
    share.sh("echo x > f").check()
    share.run(["sudo", "-n", "umount", share.mnt]).check()
    assert not share.rig.mounted(share.mnt)
    assert share.server.wait(timeout=30) == 0


def test_guest_server_killed_mid_transfer_gives_eio(share: Share) -> None:
    writer = share.sh("(dd if=/dev/zero of=stream bs=64k count=4000 conv=fsync "
                      "2>/tmp/dd.err; echo $? > /tmp/dd.rc) >/dev/null 2>&1 & echo started")
    writer.check()
    deadline = time.monotonic() + 60
    while not (share.export / "stream").exists() or \
            (share.export / "stream").stat().st_size < 1 << 20:
        assert time.monotonic() < deadline, "the transfer did not start"
        time.sleep(0.1)
    share.server.kill()
    share.server.wait()
    deadline = time.monotonic() + 60
    while share.run(["test", "-s", "/tmp/dd.rc"]).rc != 0:
        assert time.monotonic() < deadline, "dd hangs after the server died"
        time.sleep(0.2)
    assert share.run(["cat", "/tmp/dd.rc"]).out.strip() != "0"
    err = share.run(["cat", "/tmp/dd.err"]).out
    # The kernel first reports the lost channel, then EIO.
    assert any(message in err for message in (
        "Input/output error", "Connection reset", "Transport endpoint", "Broken pipe")), err
    stat_after = share.run(["stat", share.mnt + "/stream"])
    assert stat_after.rc != 0
    share.run(["sudo", "-n", "umount", share.mnt], timeout=30).check()
    assert not share.rig.mounted(share.mnt)
