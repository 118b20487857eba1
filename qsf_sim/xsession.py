"""A private graphical session: Xvfb, a session D-Bus and the AT-SPI accessibility bus.

    with XSession(workdir) as session:
        subprocess.run(["some-gtk-program"], env=session.env())
        session.screenshot(Path("shot.png"))

Used by the GUI tests (tests/gui/conftest.py), by a simulated GUI domain (the
sys-gui qube of qsf_sim) and by `demo --gui` without a display of the user's.
Nothing here assumes a display number: Xvfb picks a free one (-displayfd), the
bus daemon picks its own socket (--print-address). Every process is ended on exit.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

START_TIMEOUT = 20.0
AT_SPI_LAUNCHER = "/usr/libexec/at-spi-bus-launcher"


class XSessionError(RuntimeError):
    pass


def _read_line(fd: int, what: str, timeout: float = START_TIMEOUT) -> str:
    """One line a child writes on `fd` (its -displayfd or --print-address), bounded."""
    deadline = time.monotonic() + timeout
    data = b""
    os.set_blocking(fd, False)
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise XSessionError(f"{what} did not start within {timeout:.0f} s")
        select.select([fd], [], [], remaining)
        try:
            chunk = os.read(fd, 256)
        except BlockingIOError:
            continue
        if not chunk:
            raise XSessionError(f"{what} exited before it was ready")
        data += chunk
    return data.decode().strip()


class XSession:
    """Xvfb on a free display, a private session bus, and (optionally) AT-SPI on it."""

    def __init__(self, workdir: Path, *, accessibility: bool = True,
                 size: str = "1280x1024x24") -> None:
        self.workdir = Path(workdir)
        self.accessibility = accessibility
        self.size = size
        self.display = ""
        self.bus_address = ""
        self._processes: list[subprocess.Popen[bytes]] = []

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a program in this session (from `base`, default os.environ)."""
        env = dict(os.environ if base is None else base)
        for name in ("WAYLAND_DISPLAY", "NO_AT_BRIDGE", "XAUTHORITY", "AT_SPI_BUS_ADDRESS"):
            env.pop(name, None)
        env.update(self.variables())
        return env

    def variables(self) -> dict[str, str]:
        """Only the variables that select this session."""
        return {
            "DISPLAY": self.display,
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "GDK_BACKEND": "x11",
            "GSETTINGS_BACKEND": "memory",
            "GTK_A11Y": "atspi" if self.accessibility else "none",
        }

    @property
    def runtime_dir(self) -> Path:
        return self.workdir / "runtime"

    def start(self) -> XSession:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(mode=0o700, exist_ok=True)
        try:
            self._start_x()
            self._start_bus()
            if self.accessibility:
                self._start_at_spi()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn_reporting(self, argv: list[str], what: str) -> str:
        read_fd, write_fd = os.pipe()
        argv = [a.replace("{fd}", str(write_fd)) for a in argv]
        log = (self.workdir / f"{Path(argv[0]).name}.log").open("ab")
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=log, pass_fds=(write_fd,),
                                       env=self._base_env(), start_new_session=True)
        finally:
            os.close(write_fd)
            log.close()
        self._processes.append(process)
        try:
            return _read_line(read_fd, what)
        finally:
            os.close(read_fd)

    def _base_env(self) -> dict[str, str]:
        env = self.env() if self.display else dict(os.environ)
        env["XDG_RUNTIME_DIR"] = str(self.runtime_dir)
        return env

    def _start_x(self) -> None:
        xvfb = shutil.which("Xvfb")
        if xvfb is None:
            raise XSessionError("Xvfb is missing (Debian package xvfb)")
        number = self._spawn_reporting(
            [xvfb, "-displayfd", "{fd}", "-screen", "0", self.size, "-nolisten", "tcp",
             "-noreset"], "Xvfb")
        if not number.isdigit():
            raise XSessionError(f"Xvfb reported display {number!r}")
        self.display = f":{number}"

    def _start_bus(self) -> None:
        daemon = shutil.which("dbus-daemon")
        if daemon is None:
            raise XSessionError("dbus-daemon is missing (Debian package dbus-daemon)")
        self.bus_address = self._spawn_reporting(
            [daemon, "--session", "--nofork", "--nosyslog", "--print-address={fd}"],
            "dbus-daemon")

    def _start_at_spi(self) -> None:
        if not os.access(AT_SPI_LAUNCHER, os.X_OK):
            raise XSessionError(f"{AT_SPI_LAUNCHER} is missing (Debian package at-spi2-core)")
        log = (self.workdir / "at-spi.log").open("ab")
        with log:
            self._processes.append(subprocess.Popen(
                [AT_SPI_LAUNCHER, "--launch-immediately"], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, env=self.env(), start_new_session=True))
        self._wait_for_name("org.a11y.Bus")

    def _wait_for_name(self, name: str) -> None:
        send = shutil.which("dbus-send")
        if send is None:
            raise XSessionError("dbus-send is missing (Debian package dbus-bin)")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            result = subprocess.run(
                [send, "--session", "--print-reply", "--dest=org.freedesktop.DBus", "/",
                 "org.freedesktop.DBus.NameHasOwner", f"string:{name}"],
                env=self.env(), capture_output=True, text=True, timeout=START_TIMEOUT)
            if "boolean true" in result.stdout:
                return
            time.sleep(0.05)
        raise XSessionError(f"{name} did not appear on the session bus")

    def screenshot(self, path: Path, window: str = "root") -> Path:
        """Save the screen (or one X window, by id) as PNG with ImageMagick's `import`."""
        program = shutil.which("import")
        if program is None:
            raise XSessionError("ImageMagick's import is missing (Debian package imagemagick)")
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([program, "-display", self.display, "-window", window, str(path)],
                       env=self.env(), check=True, capture_output=True, timeout=30)
        return path

    def stop(self) -> None:
        for process in reversed(self._processes):
            # Each runs in its own process group with what it started (bus launcher,
            # registry daemon, activated services): end the whole group.
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            process.wait()
        self._processes.clear()

    def __enter__(self) -> XSession:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
