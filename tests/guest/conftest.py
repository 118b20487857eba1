"""Fixtures of the guest rig: one QEMU guest per kernel per session.

`rig` boots the guest (kernels 6.1 and 6.12: the fixture is parametrized), starts
the mux's host end (as a program) towards a ServiceHub, and the mux's guest
end inside the guest. Tests register host services on `rig.hub` and mount them
in the guest with `rig.kernel_mount`.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import support
from guest_kernels import KERNELS, GuestKernel, GuestKernelError, KernelSpec, prepare
from guest_rig import Guest, GuestError, Result
from guest_services import ServiceHub

GUEST_MUX_SOCKET = "/run/qsf-sim/qrexec.sock"
MOUNT = Path(__file__).with_name("guest_mount.py")
_counter = itertools.count()


@dataclass
class Rig:
    guest: Guest
    hub: ServiceHub
    workdir: Path
    label: str
    mux_host: subprocess.Popen[bytes] | None = None

    def connect_port(self, target: Path, uid: int = 0, gid: int = 0) -> None:
        """(Re)start the mux's host end, as uid:gid, towards the Unix socket `target`.

        The guest end sees the port close and reattaches within a second.
        """
        self.stop_mux_host()
        argv = [sys.executable, "-m", "qsf_sim.mux", "host", "--port-socket",
                str(self.guest.qrexec_socket), "--target", str(target)]
        if uid:
            argv += ["--user", f"{uid}:{gid}"]
        with open(self.workdir / "mux-host.log", "ab") as log:
            self.mux_host = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=log, cwd=support.REPO)

    def stop_mux_host(self) -> None:
        if self.mux_host is None:
            return
        self.mux_host.terminate()
        try:
            self.mux_host.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.mux_host.kill()
            self.mux_host.wait()
        self.mux_host = None

    def python(self, *args: str, uid: int | None = None, timeout: float = 120) -> Result:
        """Run the project's python in the guest (with the repo importable)."""
        return self.guest.run([sys.executable, *args], uid=uid, timeout=timeout,
                              env={"PYTHONPATH": str(support.REPO)})

    def kernel_mount(self, service: str, mountpoint: str, *, options: str = "",
                     uid: int | None = support.QUBE_UID) -> Result:
        """Mount host `service` at mountpoint in the guest via guest_mount (qsf_kmount)."""
        return self.python(str(MOUNT), "--socket", GUEST_MUX_SOCKET, "--service", service,
                             "--source", f"qvm://host/{service}", "--mountpoint", mountpoint,
                             "-o", options, uid=uid)

    def new_service(self, argv: list[str]) -> str:
        name = f"svc{next(_counter)}"
        self.hub.register(name, argv)
        return name

    def mountpoint(self) -> str:
        path = f"/tmp/mnt{next(_counter)}"
        self.guest.run(["install", "-d", "-o", str(support.QUBE_UID), "-g",
                        str(support.QUBE_GID), path]).check()
        return path

    def mounted(self, path: str) -> bool:
        return self.guest.run(["mountpoint", "-q", path]).rc == 0

    def cleanup_mounts(self) -> None:
        """Unmount every test mount (between tests)."""
        self.guest.sh("for m in $(awk '$1 ~ /^qvm:/ {print $2}' /proc/mounts); do "
                      "umount \"$m\" 2>/dev/null || umount -l \"$m\"; done")


def _boot_failure(message: str) -> None:
    if support.ON_CI:
        pytest.fail(f"the guest cannot boot: {message}", pytrace=False)
    pytest.skip(f"the guest cannot boot: {message}")


class MuxStartError(Exception):
    """The mux's guest end did not start in a booted guest."""


def start_rig(kernel: GuestKernel, workdir: Path) -> Rig:
    """Boot a guest on `kernel` and start the mux at both ends, towards a new hub.

    Raises GuestError if the guest does not boot, MuxStartError if the guest's
    mux end does not start; either way nothing is left running.
    """
    guest = Guest(kernel, workdir)
    hub = ServiceHub(workdir / "hub.sock", workdir / "services.log")
    rig = Rig(guest, hub, workdir, kernel.label)
    try:
        guest.start()
        rig.connect_port(hub.path)
        guest_mux = shlex.join([sys.executable, "-m", "qsf_sim.mux", "guest",
                                "--port-name", "qsf.qrexec", "--listen", GUEST_MUX_SOCKET])
        guest.sh(f"cd {shlex.quote(str(support.REPO))} && setsid {guest_mux} "
                 f"</dev/null >/tmp/mux-guest.log 2>&1 &").check()
        deadline = time.monotonic() + 30
        while guest.run(["test", "-S", GUEST_MUX_SOCKET]).rc != 0:
            if time.monotonic() > deadline:
                log = guest.run(["cat", "/tmp/mux-guest.log"]).out
                raise MuxStartError(f"the guest's mux end did not start: {log}")
            time.sleep(0.2)
    except BaseException:
        stop_rig(rig)
        raise
    return rig


def stop_rig(rig: Rig) -> None:
    """Stop the guest, the hub (and its services) and the mux's host end."""
    rig.guest.stop()
    rig.hub.close()
    rig.stop_mux_host()


@pytest.fixture(scope="session", params=KERNELS, ids=[k.label for k in KERNELS])
def rig(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    spec: KernelSpec = request.param
    support.need_program("qemu-system-x86_64")
    support.need_program("sudo")
    try:
        kernel = prepare(spec)
    except (GuestKernelError, OSError) as error:
        support.missing(f"guest kernel {spec.label}: {error}")
        raise AssertionError("unreachable") from error
    workdir = tmp_path_factory.mktemp(f"guest-{spec.label}")
    try:
        rig = start_rig(kernel, workdir)
    except GuestError as error:
        _boot_failure(str(error))
    except MuxStartError as error:
        pytest.fail(str(error))
    try:
        yield rig
    finally:
        stop_rig(rig)


@pytest.fixture
def clean_rig(rig: Rig) -> Iterator[Rig]:
    """The session's guest, with this test's mounts removed afterwards."""
    yield rig
    rig.cleanup_mounts()


@pytest.fixture
def export() -> Iterator[Path]:
    """An export directory owned by the qube's user, reachable by that user."""
    path = Path(tempfile.mkdtemp(prefix="qsf-guest-export-", dir="/tmp"))
    os.chmod(path, 0o755)
    os.chown(path, support.QUBE_UID, support.QUBE_GID)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked slow run only when asked for (`-m slow`)."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if item.get_closest_marker("slow") and here in Path(item.path).parents:
            item.add_marker(skip)
