"""A QEMU guest (TCG) running Debian's kernel, with the host's root as its root.

The guest mounts the host's / read-only through QEMU's virtio-9p, chroots into
it and runs guest_agent.py on the virtio-serial port "qsf.control": the host
runs commands in the guest with `Guest.run`. A second port, "qsf.qrexec", is
the qube's qrexec channel: its host end is the chardev socket `qrexec_socket`.
"""

from __future__ import annotations

import base64
import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from guest_kernels import GuestKernel

AGENT = Path(__file__).with_name("guest_agent.py")
REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 180.0
QEMU = "qemu-system-x86_64"


class GuestError(Exception):
    """The guest failed to boot or its control channel broke."""


@dataclass(frozen=True)
class Result:
    argv: list[str]
    rc: int
    stdout: bytes
    stderr: bytes
    timed_out: bool

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    def check(self) -> Result:
        if self.rc != 0 or self.timed_out:
            raise AssertionError(
                f"guest: {shlex.join(self.argv)} exited {self.rc}"
                f"{' (timed out)' if self.timed_out else ''}\n"
                f"stdout: {self.out[-3000:]}\nstderr: {self.err[-3000:]}")
        return self


class Guest:
    """One booted guest; `run` executes commands in it as root or as a uid."""

    def __init__(self, kernel: GuestKernel, workdir: Path) -> None:
        self.kernel = kernel
        self.workdir = workdir
        self.control_socket = workdir / "control.sock"
        self.qrexec_socket = workdir / "qrexec.sock"
        self.console_log = workdir / "console.log"
        self.qemu_log = workdir / "qemu.log"
        self._qemu: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._buffer = b""

    def qemu_argv(self) -> list[str]:
        words = [f"qsf_python={sys.executable}", f"qsf_agent={AGENT}", f"qsf_keep={REPO}"]
        if any(len(word.split()) != 1 for word in words):
            raise GuestError(f"no white space allowed on the kernel command line: {words}")
        append = " ".join(["console=ttyS0", "panic=-1", "quiet", *words])
        ports = []
        for index, (name, path) in enumerate((("qsf.control", self.control_socket),
                                              ("qsf.qrexec", self.qrexec_socket))):
            ports += ["-chardev", f"socket,id=port{index},path={path},server=on,wait=off",
                      "-device", f"virtserialport,chardev=port{index},name={name}"]
        return [
            QEMU, "-accel", "tcg", "-m", "1024", "-smp", "2", "-nographic", "-no-reboot",
            "-monitor", "none", "-nic", "none", "-serial", f"file:{self.console_log}",
            "-kernel", str(self.kernel.vmlinuz), "-initrd", str(self.kernel.initrd),
            "-append", append,
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                       "readonly=on,multidevs=remap",
            "-device", "virtio-serial-pci", *ports,
        ]

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no console output)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        with open(self.qemu_log, "wb") as log:
            self._qemu = subprocess.Popen(self.qemu_argv(), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            self._connect(deadline)
            # The first answer says the guest is up (the agent runs in the chroot).
            try:
                result = self.run(["true"], timeout=max(1.0, deadline - time.monotonic()))
                break
            except (ConnectionResetError, BrokenPipeError):
                # QEMU drops the host end while the guest's port comes up (seen
                # once under load): connect again and ask again ("true" is harmless).
                assert self._control is not None
                self._control.close()
                self._control = None
                self._buffer = b""
                if time.monotonic() > deadline:
                    raise GuestError(f"the guest's control channel kept resetting\n"
                                     f"console:\n{self.console_tail()}") from None
                time.sleep(0.5)
        if result.rc != 0:
            raise GuestError(f"the guest agent answered {result}")

    def _connect(self, deadline: float) -> None:
        assert self._qemu is not None
        while self._control is None:
            if self._qemu.poll() is not None:
                raise GuestError(self._qemu_died())
            if time.monotonic() > deadline:
                raise GuestError(f"QEMU did not create {self.control_socket}")
            control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                control.connect(str(self.control_socket))
                self._control = control
            except (FileNotFoundError, ConnectionRefusedError):
                control.close()
                time.sleep(0.05)

    def _qemu_died(self) -> str:
        assert self._qemu is not None
        stderr = self.qemu_log.read_text(errors="replace")
        return (f"QEMU exited {self._qemu.returncode}: {stderr.strip()[-3000:]}\n"
                f"console:\n{self.console_tail()}")

    def run(self, argv: list[str], *, uid: int | None = None, input: bytes = b"",
            timeout: float = 60, env: dict[str, str] | None = None,
            cwd: str | None = None) -> Result:
        """Run argv in the guest (as root, or as uid:uid without groups) and wait."""
        if self._control is None:
            raise GuestError("the guest is not running")
        command = list(argv)
        if uid is not None:
            command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                       "--", *command]
        request = {"argv": command, "stdin": base64.b64encode(input).decode(),
                   "timeout": timeout, "env": env, "cwd": cwd}
        self._control.sendall(json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + timeout + 30
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuestError(f"no answer from the guest for {command}\n"
                                 f"console:\n{self.console_tail()}")
            self._control.settimeout(remaining)
            try:
                chunk = self._control.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                raise GuestError(f"the guest's control channel closed\n"
                                 f"console:\n{self.console_tail()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer = json.loads(line)
        return Result(command, answer["rc"], base64.b64decode(answer["stdout"]),
                      base64.b64decode(answer["stderr"]), answer["timed_out"])

    def sh(self, script: str, **kwargs: object) -> Result:
        """Run a shell script in the guest (same keywords as run)."""
        return self.run(["sh", "-c", script], **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._qemu is not None and self._qemu.poll() is None:
            self._qemu.send_signal(signal.SIGTERM)
            try:
                self._qemu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._qemu.kill()
                self._qemu.wait()
        for path in (self.control_socket, self.qrexec_socket):
            path.unlink(missing_ok=True)
