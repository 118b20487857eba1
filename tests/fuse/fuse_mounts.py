"""Real FUSE mounts of qsf-fuse against real 9P servers (qsf-server and diod).

`start_mount` mounts a fresh export and waits for the mount (failing if the
client died); `unmount` runs `fusermount -u`, asserts success and waits for the
client to exit. The fixtures are in conftest.py.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import support

MOUNT_WAIT = 15.0
EXIT_WAIT = 10.0


@dataclass
class Server:
    name: str

    def command(self, export: Path, as_user: bool = False) -> tuple[str, list[str]]:
        """The --exec command serving export, and the options the client needs for it."""
        if self.name == "diod":
            diod = support.need_program("diod")
            argv = [diod, "-f", "-n", "-c", "/dev/null", "-L", "stderr", "-e", str(export),
                    "--rfdno", "0", "--wfdno", "1"]
            if as_user:
                # diod switches users only as root; unprivileged it serves as itself.
                argv[1:1] = ["-S", "-U", str(support.QUBE_UID)]
            return shlex.join(argv), [f"aname={export}"]
        if importlib.util.find_spec("qsf_server.__main__") is None:
            support.missing("qsf_server (python -m qsf_server)")
        return shlex.join([sys.executable, "-m", "qsf_server", str(export)]), []


SERVERS = [
    pytest.param(Server("qsf"), id="qsf"),
    pytest.param(Server("diod"), id="diod", marks=pytest.mark.diod),
]


def make_workdir() -> Path:
    """A directory every user can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="qsf-fuse-test-"))
    path.chmod(0o755)
    return path


@dataclass
class Mount:
    export: Path
    mnt: Path
    process: subprocess.Popen[bytes]
    server: Server
    log: Path
    extra: dict[str, object] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def server_pids(self) -> list[int]:
        """The processes the client spawned (the server of --exec)."""
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            return [int(pid) for pid in children.read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            return []


def is_mounted(path: Path) -> bool:
    """From /proc/mounts: os.path.ismount cannot look into another user's FUSE mount."""
    escaped = str(path).replace("\\", "\\134").replace(" ", "\\040").replace("\n", "\\012")
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == escaped for line in mounts)


def wait_for_mount(mount: Mount) -> None:
    deadline = time.monotonic() + MOUNT_WAIT
    while not is_mounted(mount.mnt):
        if not mount.alive():
            pytest.fail(f"qsf-fuse exited ({mount.process.returncode}) before mounting:\n"
                        f"{mount.log_text()}")
        if time.monotonic() > deadline:
            mount.process.kill()
            pytest.fail(f"no mount after {MOUNT_WAIT} s:\n{mount.log_text()}")
        time.sleep(0.02)
    # The mount shows before libfuse is done: as root it then runs `mount -f`
    # to add an mtab entry (libfuse 3.17, Debian 13). Ready when the --exec
    # server is the client's only child.
    while len(mount.server_pids()) != 1:
        if time.monotonic() > deadline:
            mount.process.kill()
            pytest.fail(f"qsf-fuse's children never settled to its server: "
                        f"{mount.server_pids()}:\n{mount.log_text()}")
        time.sleep(0.02)


def unmount(mount: Mount, *, check: bool = True) -> None:
    """fusermount -u, then the client must exit; kill what is left if not."""
    if is_mounted(mount.mnt):
        result = subprocess.run(["fusermount", "-u", str(mount.mnt)], capture_output=True,
                                text=True, timeout=30)
        if check:
            assert result.returncode == 0, result.stderr
    try:
        mount.process.wait(EXIT_WAIT)
    except subprocess.TimeoutExpired:
        mount.process.kill()
        mount.process.wait()
        if check:
            pytest.fail(f"qsf-fuse did not exit after unmount:\n{mount.log_text()}")
    if is_mounted(mount.mnt):
        subprocess.run(["fusermount", "-u", "-z", str(mount.mnt)], check=False)


def start_mount(
    server: Server,
    workdir: Path,
    options: tuple[str, ...] = (),
    *,
    as_user: bool = False,
) -> Mount:
    support.need_fuse()
    support.need_program("fusermount")
    export = workdir / "export"
    mnt = workdir / "mnt"
    export.mkdir(exist_ok=True)
    mnt.mkdir(exist_ok=True)
    if as_user and os.geteuid() == 0:
        for path in (export, mnt):
            os.chown(path, support.QUBE_UID, support.QUBE_GID)
    command, server_options = server.command(export, as_user)
    log = workdir / "client.log"
    argv = [support.venv_program("qsf-fuse"), "--foreground",
            "-o", ",".join([*server_options, *options]) or "rw",
            "--exec", command, str(mnt)]
    if as_user:
        argv = support.as_user(argv)
    with open(log, "wb") as log_file:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=log_file)
    mount = Mount(export, mnt, process, server, log)
    wait_for_mount(mount)
    return mount


def abort_connection(path: Path) -> bool:
    """Abort the FUSE connection of the mount at path (fusectl), freeing what waits on it.

    The last resort of a test whose mount hangs: a process waiting for a reply
    the client already took cannot be killed, and keeps the mount busy.
    """
    connections = Path("/sys/fs/fuse/connections")
    try:
        minor = os.minor(os.stat(path).st_dev)
        if not any(connections.iterdir()) and os.geteuid() == 0:
            subprocess.run(["mount", "-t", "fusectl", "fusectl", str(connections)],
                           check=False, capture_output=True)
        (connections / str(minor) / "abort").write_text("1")
    except OSError:
        return False
    return True


def run_on_mount(argv: list[str], mnt: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a program on the mount; if it outlives timeout, abort the mount and fail.

    (A program waiting in the kernel for a reply cannot be killed: only
    aborting the FUSE connection frees it.)
    """
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        try:
            process.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            abort_connection(mnt)
            process.communicate()
        pytest.fail(f"{argv} still running after {timeout} s")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def assert_gone(pids: list[int], wait: float = EXIT_WAIT) -> None:
    """The processes exit (they may be zombies of an exited parent only briefly)."""
    deadline = time.monotonic() + wait
    for pid in pids:
        while _running(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"process {pid} still running")
            time.sleep(0.02)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"
