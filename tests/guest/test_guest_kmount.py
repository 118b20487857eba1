"""qsf_kmount without a guest: options, detection, and mount(8) replaced by fakes."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

import qsf_kmount
from qsf_kmount import KmountError, build_options, detect

BASE = "trans=fd,rfdno=0,wfdno=1,version=9p2000.L"


def test_kmount_default_options() -> None:
    assert build_options() == (f"{BASE},msize=1048576,cache=mmap,access=user,nosuid,nodev")


def test_kmount_options_overrides_and_extras() -> None:
    built = build_options(read_only=True, options="cache=loose,msize=65536,noatime,"
                                                 "aname=/srv/export,uname=user")
    assert built == (f"{BASE},msize=65536,cache=loose,access=user,nosuid,nodev,ro,"
                     "noatime,aname=/srv/export,uname=user")
    assert build_options(options=["access=1000"]).count("access=1000") == 1
    assert build_options(msize=4096, cache="none").startswith(f"{BASE},msize=4096,cache=none")


@pytest.mark.parametrize("options", [
    "suid", "dev", "trans=tcp", "rfdno=5", "wfdno=3", "version=9p2000.u", "msize=abc",
    "msize=1048577", "msize=100", "cache=bogus", "access=root", "aname=a b",
    "uname=$(id)", "ro=1", "noatime=yes", "port=564", "aname=/a,b",
])
def test_kmount_rejects_options(options: str) -> None:
    with pytest.raises(KmountError):
        build_options(options=options)


def test_kmount_rejects_bad_parameters() -> None:
    with pytest.raises(KmountError):
        build_options(msize=1 << 21)
    with pytest.raises(KmountError):
        build_options(cache="fast")


def fake_programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mount_body: str) -> Path:
    """A PATH with a fake mount (and sudo/umount); the fakes log their argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.log"
    programs = {
        "mount": f'echo "mount $*" >> {log}\n{mount_body}',
        "umount": f'echo "umount $*" >> {log}',
        "sudo": f'echo "sudo $*" >> {log}\n[ "$1" = -n ] && shift; [ "$1" = -- ] && shift\n'
                'exec "$@"',
    }
    for name, body in programs.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def test_kmount_mount_hands_the_channel_on_stdin_and_stdout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake mount answers on fd 1 what it reads on fd 0, as the kernel would talk.
    log = fake_programs(tmp_path, monkeypatch, "head -c 5 <&0 | tr a-z A-Z >&1")
    ours, channel = socket.socketpair()
    ours.sendall(b"hello")
    qsf_kmount.mount(channel.fileno(), channel.fileno(), "qvm://server/srv/a", "/mnt/x",
                     options="noatime")
    channel.close()
    assert ours.recv(10) == b"HELLO"
    argv = log.read_text().splitlines()
    assert argv == [f"mount -t 9p -o {BASE},msize=1048576,cache=mmap,access=user,nosuid,"
                    "nodev,noatime -- qvm://server/srv/a /mnt/x"]


def test_kmount_uses_sudo_when_not_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_programs(tmp_path, monkeypatch, "true")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    qsf_kmount.mount(0, 1, "qvm://s/f", "/mnt/y")
    qsf_kmount.unmount("/mnt/y")
    lines = log.read_text().splitlines()
    assert lines[0].startswith("sudo -n -- ") and lines[0].endswith(" -- qvm://s/f /mnt/y")
    assert lines[1].startswith("mount -t 9p")
    assert lines[2].startswith("sudo -n -- ") and lines[2].endswith("umount -- /mnt/y")


def test_kmount_reports_mounts_own_error(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fake_programs(tmp_path, monkeypatch, 'echo "mount: /mnt/z: special device" >&2; exit 32')
    with pytest.raises(KmountError, match=r"exit 32.*special device"):
        qsf_kmount.mount(0, 1, "qvm://s/f", "/mnt/z")


@pytest.mark.parametrize(("source", "mountpoint"), [
    ("", "/mnt"), ("-o", "/mnt"), ("qvm://s/a,b", "/mnt"), ("qvm://s/a b", "/mnt"),
    ("qvm://s/f", "relative"), ("qvm://s/f", "/mnt/\n"),
])
def test_kmount_rejects_source_and_mountpoint(source: str, mountpoint: str) -> None:
    with pytest.raises(KmountError):
        qsf_kmount.mount(0, 1, source, mountpoint)


def test_kmount_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    filesystems = tmp_path / "filesystems"
    filesystems.write_text("nodev\tproc\nnodev\ttmpfs\n")
    sys_module = tmp_path / "sys-module"
    sys_module.mkdir()
    modules = tmp_path / "modules"
    monkeypatch.setattr(detect, "PROC_FILESYSTEMS", filesystems)
    monkeypatch.setattr(detect, "SYS_MODULE", sys_module)
    monkeypatch.setattr(detect, "MODULES", modules)
    assert "no 9p file system" in (detect.v9fs_problem("6.1.0-1-amd64") or "")
    # Installed as modules (6.12 style, compressed): usable.
    kernel = modules / "6.12.1" / "kernel"
    (kernel / "fs" / "9p").mkdir(parents=True)
    (kernel / "net" / "9p").mkdir(parents=True)
    (kernel / "fs" / "9p" / "9p.ko.xz").touch()
    assert "9pnet_fd" in (detect.v9fs_problem("6.12.1") or "")
    (kernel / "net" / "9p" / "9pnet_fd.ko.xz").touch()
    assert detect.v9fs_problem("6.12.1") is None
    # Loaded (as in the test guest, whose modules come from its initramfs).
    filesystems.write_text("nodev\tproc\nnodev\t9p\n")
    assert "9pnet_fd" in (detect.v9fs_problem("6.1.0-1-amd64") or "")
    (sys_module / "9pnet_fd").mkdir()
    assert detect.v9fs_problem("6.1.0-1-amd64") is None
    # Before 6.1 the fd transport was part of 9pnet.
    assert detect.v9fs_problem("5.15.0") is None


def test_kmount_availability_on_this_host() -> None:
    usable, reason = qsf_kmount.availability()
    assert usable == qsf_kmount.available()
    assert reason
