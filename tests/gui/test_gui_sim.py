"""The whole share flow through qsf_sim with the real dialog in a simulated GUI domain.

dom0's qsf.AuthorizeFolderAccess runs in "gui" mode (qsf_sim.dom0_services): it looks
up the client's guivm in the simulator's qube directory and asks qsf-ask-agent there,
in dom0 itself (its socket service) or in the simulated sys-gui qube (through
qrexec, the socket service run by the simulator as qrexec-agent runs one). Each
agent runs as its qube's user on the test's Xvfb. The user answers by keyboard
(xdotool); the agents have no accessibility bus here (the session bus belongs to
the test's user), so an allow key is pressed until the focus delay has passed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from ask_helpers import TITLE
from conftest import Keys

from qsf_dom0 import policy
from qsf_dom0.config import Config
from qsf_sim.layout import Qube, qube_dir
from qsf_sim.runas import lookup
from qsf_sim.sim import Sim
from qsf_sim.xsession import XSession

pytestmark = pytest.mark.fuse
QUBES = [Qube("work", label="green"), Qube("server", label="gray"), Qube("sys-gui"),
         Qube("office", label="purple", guivm="sys-gui")]


@pytest.fixture(scope="module")
def sim(gui_session: XSession) -> Iterator[Sim]:
    if os.geteuid() != 0:
        support.missing("root (qsf_sim gives every simulated qube its own Unix user)")
    support.need_program("fusermount3")
    support.need_fuse()
    root = Path(tempfile.mkdtemp(prefix="qsf-gui-sim-", dir="/tmp"))
    root.chmod(0o755)
    simulation = Sim(root / "sim", QUBES, qsf_prompt="gui")
    try:
        with simulation:
            assert simulation.run("server", ["mkdir", "-p", "share"]).returncode == 0
            hello = simulation.home("server") / "share" / "hello.txt"
            hello.write_text("hello through the dialog\n")
            identity = lookup("server")
            shutil.chown(hello, identity.uid, identity.gid)
            yield simulation
    finally:
        _unmount_all(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def clean(sim: Sim) -> Iterator[Sim]:
    config = Config.under(qube_dir(sim.root, "dom0"))
    for path in (config.store_path, config.grants_dir / policy.GRANTS_FILE,
                 config.once_dir / policy.ONCE_FILE):
        path.unlink(missing_ok=True)
    for path in config.state_dir.iterdir() if config.state_dir.exists() else ():
        path.unlink()
    yield sim
    _unmount_all(sim.root)


def _unmount_all(root: Path) -> None:
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as table:
        points = [line.split(" ")[1] for line in table if line.split(" ")[1].startswith(str(root))]
    for point in reversed(points):
        subprocess.run(["fusermount3", "-u", point], check=False, capture_output=True)


def start_mount(sim: Sim, client: str, target: str = "mnt") -> subprocess.Popen[bytes]:
    assert sim.run(client, ["mkdir", "-p", target]).returncode == 0
    folder = str(sim.home("server") / "share")
    return sim.popen(client, ["qvm-mount-folder", "server", folder,
                              str(sim.home(client) / target)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def answer_by_keyboard(keys: Keys, key: str, mount: subprocess.Popen[bytes]) -> None:
    """Focus the dialog and press `key` until the dialog takes it (allow keys do nothing
    during the focus delay), i.e. until the mount command finishes."""
    keys.focus(keys.window(TITLE))
    deadline = time.monotonic() + 30
    while mount.poll() is None and time.monotonic() < deadline:
        keys.press(key)
        try:
            mount.wait(0.3)
        except subprocess.TimeoutExpired:
            continue


def read(sim: Sim, client: str) -> bytes:
    """The shared file, read in the client qube (root may not enter its FUSE mount)."""
    result = sim.run(client, ["cat", str(sim.home(client) / "mnt" / "hello.txt")])
    assert result.returncode == 0, result.stderr
    return result.stdout


def grant_lines(sim: Sim) -> tuple[list[str], list[str]]:
    config = Config.under(qube_dir(sim.root, "dom0"))

    def lines(path: Path) -> list[str]:
        text = path.read_text() if path.exists() else ""
        return [line for line in text.splitlines() if not line.startswith("#")]

    return (lines(config.grants_dir / policy.GRANTS_FILE),
            lines(config.once_dir / policy.ONCE_FILE))


def test_dom0_is_the_gui_domain(clean: Sim, gui_session: XSession, keys: Keys) -> None:
    agent = clean.start_ask_agent("dom0", gui_session.variables())
    try:
        mount = start_mount(clean, "work")
        answer_by_keyboard(keys, "alt+o", mount)
        _, err = mount.communicate(timeout=60)
        assert mount.returncode == 0, err
    finally:
        agent.terminate()
        agent.wait(timeout=20)
    assert read(clean, "work") == b"hello through the dialog\n"
    assert "work -> server: allow-once rw" in clean.service_log("dom0")
    assert "work -> server: allowed rw" in clean.service_log("dom0")
    assert grant_lines(clean) == ([], [])  # the one-time grant was used by the mount


def test_sys_gui_is_the_gui_domain(clean: Sim, gui_session: XSession, keys: Keys) -> None:
    agent = clean.start_ask_agent("sys-gui", gui_session.variables())
    try:
        mount = start_mount(clean, "office")
        answer_by_keyboard(keys, "alt+a", mount)
        _, err = mount.communicate(timeout=60)
        assert mount.returncode == 0, err
    finally:
        agent.terminate()
        agent.wait(timeout=20)
    assert read(clean, "office") == b"hello through the dialog\n"
    assert "office -> server: allow-always rw" in clean.service_log("sys-gui")
    assert "qsf-ask-agent: office" not in clean.service_log("dom0")  # asked in sys-gui only
    [grant], _ = grant_lines(clean)
    assert grant.endswith(" office server allow")


@pytest.mark.parametrize("client", ["work", "office"])
def test_no_agent_is_deny_nogui(clean: Sim, client: str) -> None:
    mount = start_mount(clean, client)
    _, err = mount.communicate(timeout=90)
    assert mount.returncode == 3
    assert b"no dialog could be shown" in err and b"qsf-ask-agent" in err
    assert grant_lines(clean) == ([], [])
    assert "deny nogui" in clean.service_log("dom0") or "(nogui)" in clean.service_log("dom0")


@pytest.mark.parametrize("target", ["dom0", "sys-gui"])
def test_no_qube_may_call_the_dialog(clean: Sim, gui_session: XSession, target: str) -> None:
    agent = clean.start_ask_agent(target, gui_session.variables())
    try:
        result = clean.call("work", target, "qsf.AskFolderAccess",
                            input=b"client work\nlabel red\n")
    finally:
        agent.terminate()
        agent.wait(timeout=20)
    assert result.returncode == 126, result
    assert b"Request refused" in result.stderr
