"""Real windows under test: Xvfb, a private session D-Bus, AT-SPI, keyboard, screenshots.

Fixtures (any test under tests/gui/ may use them):

  gui_session   one `qsf_sim.xsession.XSession` for the whole run: Xvfb on a display
                number it picks itself, a private `dbus-daemon --session`, and the
                AT-SPI bus launcher and registry on it. This test process's own
                environment is left alone (programs under test get
                `gui_session.env()`); pyatspi connects to its accessibility bus once.
  atspi         the `Atspi` helper below, bound to that session.
  keys          `Keys`: xdotool on that display (`keys.press("Escape")`, `keys.type("x")`).
  screenshot    `screenshot(path, window="root")`: a PNG of the screen or of one X
                window (ImageMagick's import).
  picture       `picture(name, window)`: a README picture: a PNG of X window `window`
                (an id, e.g. from keys.window(TITLE)) in the test's tmp_path, copied to
                $QSF_SCREENSHOTS_DIR/NAME.png when set (`make screenshots` sets it to
                docs/images).

Every dependency (Xvfb, dbus-daemon, at-spi2-core, PyGObject with GTK 3, pyatspi,
xdotool, ImageMagick) missing means skip, and under CI=true fail (support.missing).
Waits are bounded polls on a condition (`wait_for`), never bare sleeps.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import support

from qsf_sim.xsession import XSession, XSessionError

T = TypeVar("T")
WAIT = 20.0  # bound of every wait on a window (the machine is loaded)

PROGRAMS = {
    "Xvfb": "xvfb",
    "dbus-daemon": "dbus-daemon",
    "dbus-send": "dbus-bin",
    "xdotool": "xdotool",
    "import": "imagemagick",
    "convert": "imagemagick",
}


def need_gui() -> None:
    """Skip (fail under CI) unless everything a real-window test needs is installed."""
    for program, package in PROGRAMS.items():
        if shutil.which(program) is None:
            support.missing(f"program {program} (Debian package {package})")
    if not os.access("/usr/libexec/at-spi-bus-launcher", os.X_OK):
        support.missing("AT-SPI (Debian package at-spi2-core)")
    try:
        gi = importlib.import_module("gi")
        gi.require_version("Gtk", "3.0")
        gi.require_version("Atspi", "2.0")
        importlib.import_module("gi.repository.Gtk")
    except (ImportError, ValueError) as error:
        support.missing(f"PyGObject with GTK 3 and Atspi ({error}; python3-gi, "
                        "gir1.2-gtk-3.0, gir1.2-atspi-2.0)")
    if importlib.util.find_spec("pyatspi") is None:
        support.missing("pyatspi (Debian package python3-pyatspi)")


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except Exception as error:
            # A widget the window replaced while the tree was being walked (a reload):
            # AT-SPI answers that the object no longer exists. Walk again.
            if "does not exist" not in str(error) or time.monotonic() > deadline:
                raise
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def gui_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XSession]:
    need_gui()
    session = XSession(tmp_path_factory.mktemp("xsession"))
    try:
        session.start()
    except XSessionError as error:
        pytest.fail(f"could not start the test X session: {error}", pytrace=False)
    try:
        yield session
    finally:
        session.stop()


@contextlib.contextmanager
def session_environment(session: XSession) -> Iterator[None]:
    """This process's environment selects `session` inside the block only."""
    saved = {name: os.environ.get(name) for name in (*session.variables(), "NO_AT_BRIDGE")}
    os.environ.update(session.variables())
    os.environ.pop("NO_AT_BRIDGE", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Atspi:
    """The accessibility tree of the test session, through pyatspi."""

    def __init__(self, session: XSession) -> None:
        # pyatspi finds the accessibility bus through DISPLAY and the session bus when it
        # first connects, and keeps that connection: the rest of the run (other test
        # areas) does not see this session in its environment.
        with session_environment(session):
            self.pyatspi: Any = importlib.import_module("pyatspi")
            self.pyatspi.Registry.getDesktop(0).childCount  # noqa: B018 (connects)

    def application(self, name: str, timeout: float = WAIT) -> Any:
        """The application called `name` (its program name for Python: the script name)."""

        def find() -> Any:
            desktop = self.pyatspi.Registry.getDesktop(0)
            for index in range(desktop.childCount):
                app = desktop.getChildAtIndex(index)
                if app is not None and app.name == name:
                    return app
            return None

        return wait_for(find, f"application {name!r} on the accessibility bus", timeout)

    def descendants(self, node: Any) -> Iterator[Any]:
        for index in range(node.childCount):
            child = node.getChildAtIndex(index)
            if child is None:
                continue
            yield child
            yield from self.descendants(child)

    def find(self, root: Any, role: str, name: str | None = None,
             timeout: float = WAIT) -> Any:
        """The first descendant with role `role` ("push button", "label"...) and `name`."""

        def search() -> Any:
            for node in self.descendants(root):
                if node.getRoleName() == role and (name is None or node.name == name):
                    return node
            return None

        return wait_for(search, f"a {role} named {name!r}", timeout)

    def names(self, root: Any, role: str) -> list[str]:
        return [n.name for n in self.descendants(root) if n.getRoleName() == role]

    def has_state(self, node: Any, state: str) -> bool:
        """Whether `node` has state `state` ("sensitive", "focused", "checked"...)."""
        value = getattr(self.pyatspi, "STATE_" + state.upper().replace(" ", "_"))
        return bool(node.getState().contains(value))

    def press(self, node: Any) -> None:
        """Do the node's first action (click, for a button)."""
        node.do_action(0)  # Atspi.Action (pyatspi's queryAction is deprecated)


@pytest.fixture(scope="session")
def atspi(gui_session: XSession) -> Atspi:
    return Atspi(gui_session)


class Keys:
    """Keyboard input with xdotool on the session's display, to the focused window."""

    def __init__(self, session: XSession) -> None:
        self.session = session

    def run(self, *args: str) -> str:
        result = subprocess.run(["xdotool", *args], env=self.session.env(), check=True,
                                capture_output=True, text=True, timeout=WAIT)
        return result.stdout

    def press(self, *keys: str) -> None:
        self.run("key", "--clearmodifiers", *keys)

    def type(self, text: str) -> None:
        self.run("type", "--delay", "20", text)

    def window(self, name: str, timeout: float = WAIT) -> str:
        """The X id of the window titled exactly `name`."""

        def search() -> str | None:
            result = subprocess.run(["xdotool", "search", "--onlyvisible", "--name",
                                     f"^{name}$"], env=self.session.env(),
                                    capture_output=True, text=True, timeout=WAIT)
            ids = result.stdout.split()
            return ids[0] if ids else None

        return wait_for(search, f"a visible window titled {name!r}", timeout)

    def focus(self, window: str) -> None:
        self.run("windowfocus", "--sync", window)


@pytest.fixture(scope="session")
def keys(gui_session: XSession) -> Keys:
    return Keys(gui_session)


@pytest.fixture(scope="session")
def screenshot(gui_session: XSession) -> Callable[..., Path]:
    def take(path: Path, window: str = "root") -> Path:
        return gui_session.screenshot(path, window)

    return take


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG (from its IHDR chunk)."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def pixels(path: Path) -> bytes:
    """The RGB pixels of an image (PNG files of equal pixels may differ in metadata)."""
    return subprocess.run(["convert", str(path), "rgb:-"], check=True, capture_output=True,
                          timeout=WAIT).stdout


@pytest.fixture
def picture(gui_session: XSession, tmp_path: Path) -> Callable[[str, str], Path]:
    def take(name: str, window: str) -> Path:
        shot = gui_session.screenshot(tmp_path / f"{name}-window.png", window)
        # A thin grey frame: without a window manager the window has no border of its
        # own, and the README's page is about as light as the window.
        path = tmp_path / f"{name}.png"
        subprocess.run(["convert", str(shot), "-bordercolor", "#9a9996", "-border", "1",
                        "-strip", str(path)], check=True, capture_output=True, timeout=WAIT)
        width, height = png_size(path)
        assert width > 100 and height > 100, f"{name}: {width}x{height} is no window"
        target = os.environ.get("QSF_SCREENSHOTS_DIR")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(target) / f"{name}.png")
        return path

    return take
