"""Issue 9 point 6: `mount -t qvm` and fstab lines through the real mount(8).

util-linux's mount(8) finds helpers only in /sbin and runs them without PATH, so
each test runs in a private mount namespace held by one process: there, overlays
put mount.qvm into /sbin's directory and the simulated qube's qrexec-client-vm
into /usr/local/bin (where a qube has its own in /usr/bin), and a bind mount puts
the test's fstab over /etc/fstab. Nothing outside that namespace changes, and it
ends with its holder. Root's calls go out as the qube's user (root in a qube is
that qube); user mounts from fstab run as the qube's user, through the setuid
mount(8).
"""
# The fixtures running_sim and sim come from test_e2e_share (one simulator per module):
# ruff: noqa: F811

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import support
from test_e2e_share import (  # noqa: F401 (fixtures)
    mountpoint,
    running_sim,
    share,
    sim,
)

from qsf_mount import mounts
from qsf_sim.runas import lookup
from qsf_sim.sim import Sim

pytestmark = pytest.mark.fuse


class Namespace:
    """A private mount namespace with mount.qvm in /sbin and our own /etc/fstab."""

    def __init__(self, sim: Sim, work: Path) -> None:
        for program in ("unshare", "nsenter", "mount"):
            support.need_program(program)
        self.sim = sim
        extra = work / "sbin"
        extra.mkdir()
        (extra / "mount.qvm").symlink_to(support.venv_program("mount.qvm"))
        # qube work's qrexec-client-vm; root in a qube calls qrexec as that qube (the
        # simulator knows qubes by their users).
        local_bin = work / "local-bin"
        local_bin.mkdir()
        identity = lookup("work")
        client = sim.root / "qubes" / "work" / "bin" / "qrexec-client-vm"
        wrapper = local_bin / "qrexec-client-vm"
        wrapper.write_text(f"#!/bin/sh\n[ \"$(id -u)\" = 0 ] || exec {client} \"$@\"\n"
                           f"exec setpriv --reuid={identity.uid} --regid={identity.gid}"
                           f" --clear-groups -- {client} \"$@\"\n")
        wrapper.chmod(0o755)
        for path in (work, extra, local_bin):
            path.chmod(0o755)
        self.fstab = work / "fstab"
        self.fstab.write_text("# qsf test fstab\n")
        self.fstab.chmod(0o644)
        sbin = os.path.realpath("/sbin")
        script = (f"mount -t overlay qsf-test-sbin -o lowerdir={extra}:{sbin} {sbin}"
                  " && mount -t overlay qsf-test-bin"
                  f" -o lowerdir={local_bin}:/usr/local/bin /usr/local/bin"
                  f" && mount --bind {self.fstab} /etc/fstab && echo ready && exec sleep 3600")
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--",
                                        "/bin/sh", "-c", script], stdout=subprocess.PIPE)
        assert self.holder.stdout is not None
        if self.holder.stdout.readline() != b"ready\n":
            self.holder.wait()
            support.missing("overlayfs and bind mounts in a private mount namespace")

    def add_fstab(self, line: str) -> None:
        with open(self.fstab, "a", encoding="utf-8") as fstab:
            fstab.write(line + "\n")

    def run(self, qube: str | None, argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        """argv in the namespace: as qube `qube`'s user, or as root in qube work (None)."""
        if qube is None:
            env, command = self.sim.env("work"), list(argv)
        else:
            env, command = self.sim.env(qube), self.sim.command(qube, argv)
        return subprocess.run(["nsenter", f"--target={self.holder.pid}", "--mount", "--",
                               *command], env=env, cwd="/", capture_output=True, timeout=90,
                              check=False)

    def shares(self) -> list[mounts.Share]:
        with open(f"/proc/{self.holder.pid}/mounts", encoding="utf-8",
                  errors="surrogateescape") as table:
            return mounts.shares(table.read())

    def close(self) -> None:
        for found in reversed(self.shares()):
            self.run(None, ["umount", "-l", found.mountpoint])
        self.holder.send_signal(signal.SIGTERM)
        self.holder.wait()


@pytest.fixture
def namespace(sim: Sim, tmp_path: Path) -> Iterator[Namespace]:
    tmp_path.chmod(0o755)
    space = Namespace(sim, tmp_path)
    try:
        yield space
    finally:
        space.close()


def source(sim: Sim, *parts: str) -> str:
    return f"qvm://server{share(sim, *parts)}"


def test_root_mounts_with_mount_t_qvm(sim: Sim, namespace: Namespace) -> None:
    target = mountpoint(sim, "work", "by-root")
    sim.answer_folder("once rw")
    result = namespace.run(None, ["mount", "-t", "qvm", f"server:{share(sim)}", str(target),
                                  "-o", "backend=fuse,ro"])
    assert result.returncode == 0, result.stderr
    assert [(s.source, s.mountpoint, s.fstype) for s in namespace.shares()] == [
        (source(sim), str(target), "fuse.qsf")]
    assert sim.folder_prompts()[-1]["mode"] == "ro"  # ro reached dom0 as a read-only request
    cat = namespace.run(None, ["cat", str(target / "hello.txt")])
    assert cat.stdout == b"hello from server\n", cat.stderr
    write = namespace.run(None, ["touch", str(target / "new")])
    assert write.returncode != 0 and b"Read-only file system" in write.stderr
    assert namespace.run(None, ["umount", str(target)]).returncode == 0
    assert namespace.shares() == []
    # and the share never showed outside the namespace
    assert not os.path.ismount(target)


def test_root_mounts_a_line_of_a_given_fstab(sim: Sim, namespace: Namespace,
                                             tmp_path: Path) -> None:
    target = mountpoint(sim, "work", "from-fstab")
    other = tmp_path / "other-fstab"
    other.write_text(f"server:{share(sim)} {target} qvm noauto,backend=fuse,x-qsf-test 0 0\n")
    sim.answer_folder("once rw")
    result = namespace.run(None, ["mount", "--fstab", str(other), str(target)])
    assert result.returncode == 0, result.stderr
    assert [s.mountpoint for s in namespace.shares()] == [str(target)]


def test_user_mounts_an_fstab_line(sim: Sim, namespace: Namespace) -> None:
    target = mountpoint(sim, "work", "work")
    namespace.add_fstab(f"server:{share(sim)} {target} qvm noauto,user,backend=fuse 0 0")
    sim.answer_folder("once rw")
    result = namespace.run("work", ["mount", str(target)])
    assert result.returncode == 0, result.stderr
    assert [(s.source, s.mountpoint) for s in namespace.shares()] == [(source(sim), str(target))]
    cat = namespace.run("work", ["cat", str(target / "sub" / "inner.txt")])
    assert cat.stdout == b"inner\n", cat.stderr
    # `user` made mount(8) add noexec: it reached qsf-fuse
    options = next(line.split()[3] for line in
                   Path(f"/proc/{namespace.holder.pid}/mounts").read_text().splitlines()
                   if line.split()[1] == str(target))
    assert "noexec" in options.split(",")
    listed = namespace.run("work", ["qvm-mount", "--list"])
    assert f"{source(sim)} {target} fuse.qsf" in listed.stdout.decode()
    assert namespace.run("work", ["qvm-mount", "--unmount", str(target)]).returncode == 0
    assert namespace.shares() == []
    # and umount(8) lets the user unmount the FUSE mount the user made
    sim.answer_folder("once rw")
    assert namespace.run("work", ["mount", str(target)]).returncode == 0
    result = namespace.run("work", ["umount", str(target)])
    assert result.returncode == 0, result.stderr
    assert namespace.shares() == []


@pytest.mark.parametrize(
    ("line", "answer", "status", "message"),
    [("server:{home}/nope {target} qvm noauto,user,backend=fuse 0 0", "once rw", 32,
      b"no such folder"),
     ("server:{share} {target} qvm noauto,user,backend=fuse 0 0", "deny", 32,
      b"denied by the user"),
     ("server:{share} {target} qvm noauto,user,backend=nfs 0 0", None, 1, b"auto, kernel"),
     ("bad.name:{share} {target} qvm noauto,user 0 0", None, 1, b"not a qube name")],
)
def test_user_mount_failures_map_to_mounts_exit_codes(sim: Sim, namespace: Namespace, line: str,
                                                      answer: str | None, status: int,
                                                      message: bytes) -> None:
    target = mountpoint(sim, "work", "fails")
    namespace.add_fstab(line.format(home=sim.home("server"), share=share(sim), target=target))
    if answer is not None:
        sim.answer_folder(answer)
    result = namespace.run("work", ["mount", str(target)])
    assert result.returncode == status, result.stderr
    assert message in result.stderr
    assert namespace.shares() == []


def test_the_helper_only_ever_has_the_users_rights(sim: Sim, namespace: Namespace) -> None:
    """mount(8) drops its privileges before it runs a helper, even for a line without
    `user` (util-linux 2.38): mount.qvm can do nothing qvm-mount-folder could not."""
    target = mountpoint(sim, "work", "not-user")
    namespace.add_fstab(f"server:{share(sim)} {target} qvm noauto,backend=fuse 0 0")
    sim.answer_folder("once rw")
    result = namespace.run("work", ["mount", str(target)])
    assert result.returncode == 0, result.stderr
    options = next(line.split()[3] for line in
                   Path(f"/proc/{namespace.holder.pid}/mounts").read_text().splitlines()
                   if line.split()[1] == str(target))
    assert f"user_id={lookup('work').uid}" in options.split(",")  # mounted by the user
