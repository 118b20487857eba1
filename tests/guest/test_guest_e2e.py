"""`qvm-mount-folder --backend=kernel` in the guest, through qsf_sim on the host.

The guest plays the client qube "work": its qrexec channel is the virtio-serial
port, whose host end (qsf_sim.mux) runs as the simulated qube's Unix user and
connects every call to that qube's socket of the sim daemon, which therefore
knows the caller as "work". dom0's dialog is answered by the sim's scripted
prompt; the server qube runs the project's real qsf.ConnectToFolder service.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from conftest import GUEST_MUX_SOCKET, Rig

from qsf_sim.runas import lookup
from qsf_sim.sim import Sim

pytestmark = pytest.mark.guest

GUEST_BIN = "/tmp/qsf-bin"
# In the guest, qrexec-client-vm reaches the mux's guest end (no --sim-socket).
CLIENT_VM = f"""#!/bin/sh
exec {support.VENV_BIN}/python -m qsf_sim.client_vm "$@"
"""


@pytest.fixture(scope="module")
def guest_sim(rig: Rig) -> Iterator[Sim]:
    if os.geteuid() != 0:
        support.missing("root (qsf_sim gives every simulated qube its own Unix user)")
    root = Path(tempfile.mkdtemp(prefix="qsf-guest-sim-", dir="/tmp"))
    root.chmod(0o755)
    sim = Sim(root / "sim", ["work", "server"])
    try:
        with sim:
            share = sim.home("server") / "share"
            assert sim.run("server", ["mkdir", "-p", str(share)]).returncode == 0
            (share / "hello.txt").write_text("hello from server\n")
            share.chmod(0o777)  # in Qubes every qube's user is uid 1000
            work = lookup("work")
            rig.connect_port(sim.socket("work"), work.uid, work.gid)
            rig.guest.sh(f"mkdir -p {GUEST_BIN} && cat > {GUEST_BIN}/qrexec-client-vm "
                         f"&& chmod 755 {GUEST_BIN}/qrexec-client-vm",
                         input=CLIENT_VM.encode()).check()
            time.sleep(1.5)  # the guest end reattaches to the port
            yield sim
    finally:
        rig.cleanup_mounts()
        rig.connect_port(rig.hub.path)
        time.sleep(1.5)
        shutil.rmtree(root, ignore_errors=True)


def qvm_mount_folder_out(rig: Rig, *args: str) -> tuple[int, str]:
    """Run qvm-mount-folder as the guest's user; (exit status, stdout + stderr)."""
    env = {"PATH": f"{GUEST_BIN}:{support.VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
           "QSF_SIM_QREXEC_SOCKET": GUEST_MUX_SOCKET, "HOME": "/tmp"}
    result = rig.guest.run(["qvm-mount-folder", *args], uid=support.QUBE_UID, env=env,
                           timeout=120)
    return result.rc, result.out + result.err


def qvm_mount_folder(rig: Rig, *args: str) -> tuple[int, str]:
    return qvm_mount_folder_out(rig, *args)


def test_guest_qvm_mount_folder_kernel_backend(guest_sim: Sim, rig: Rig) -> None:
    share = guest_sim.home("server") / "share"
    mnt = rig.mountpoint()
    guest_sim.answer_folder("once rw")
    rc, err = qvm_mount_folder(rig, "--backend=kernel", "server", str(share), mnt)
    assert rc == 0, f"{err}\ndom0: {guest_sim.service_log('dom0')[-1500:]}" \
                    f"\nserver: {guest_sim.service_log('server')[-1500:]}"
    mounts = rig.guest.run(["cat", "/proc/mounts"]).check().out.splitlines()
    (line,) = [m for m in mounts if m.split()[1] == mnt]
    source, _, fstype, options = line.split()[:4]
    assert (source, fstype) == (f"qvm://server{share}", "9p")
    assert "trans=fd" in options and "msize=1048576" in options
    user = support.QUBE_UID
    assert rig.guest.run(["cat", f"{mnt}/hello.txt"], uid=user).check().out == \
        "hello from server\n"
    rig.guest.sh(f"echo from-guest > {mnt}/new.txt", uid=user).check()
    assert (share / "new.txt").read_text() == "from-guest\n"
    rc, listed = qvm_mount_folder_out(rig, "--list")
    assert rc == 0 and f"qvm://server{share} {mnt} 9p" in listed, listed
    rig.guest.run(["sudo", "-n", "umount", mnt], uid=user).check()
    assert not rig.mounted(mnt)
    # The share's processes end: qrexec-client-vm in the guest, qsf-server on the host.
    deadline = time.monotonic() + 30
    while rig.guest.run(["pgrep", "-f", "qsf_sim.client_vm"]).rc == 0 or \
            any(str(share) in cmdline for cmdline in _host_cmdlines()):
        assert time.monotonic() < deadline, "the share's processes did not end"
        time.sleep(0.3)


def _host_cmdlines() -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            found.append(raw.replace(b"\0", b" ").decode(errors="replace"))
    return [c for c in found if "qsf_server" in c or "qsf-server" in c]


def test_guest_qvm_mount_folder_unmount_kernel_share(guest_sim: Sim, rig: Rig) -> None:
    share = guest_sim.home("server") / "share"
    mnt = rig.mountpoint()
    guest_sim.answer_folder("once rw")
    rc, err = qvm_mount_folder(rig, "--backend=kernel", "server", str(share), mnt)
    assert rc == 0, err
    try:
        rc, err = qvm_mount_folder(rig, "--unmount", mnt)
        assert rc == 0, err
        assert not rig.mounted(mnt)
    finally:
        rig.cleanup_mounts()
