"""Server-qube notifications and the list of live exports.

A real notification server (Debian's dunst, on Xvfb with a private session bus)
receives what qsf.ConnectToFolder's qsf-server sends when it starts serving a
folder and when the client releases it; its history is read back with dunstctl.
dom0 is faked by a `qrexec-client-vm` on PATH that answers `ok rw`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import support

from qsf_server import exports, notify
from qsf_sim.xsession import XSession, XSessionError

T = TypeVar("T")
WAIT = 20.0
FP = "0123456789abcdef0123456789abcdef"
TVERSION = struct.pack("<IBHIH", 4 + 1 + 2 + 4 + 2 + 8, 100, 0xFFFF, 8192, 8) + b"9P2000.L"
HOSTILE_NAME = "<b>bold</b> & 'quoted' \"x\" <a href='x'>"

FAKE_QREXEC = """#!{python}
import sys
sys.stdin.buffer.read()
sys.stdout.buffer.write(b"ok rw\\n")
"""


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# Pure parts


def test_gvariant_literals_cannot_be_misread() -> None:
    assert notify.gvariant_string("it's a \\ test") == "'it\\'s a \\\\ test'"
    argv = notify.notify_argv("gdbus", "12", "'quoted'")
    assert argv[-8:] == ["'Qubes shared folders'", "uint32 0", "'folder-remote'", "'12'",
                         "'\\'quoted\\''", "@as []", "@a{sv} {}", "int32 8000"]


def test_messages_escape_markup_and_controls() -> None:
    summary, body = notify.messages("serving", "work", b"/srv/<i>&\n\xff", "ro")
    assert summary == "Sharing a folder with work"
    assert body == "<b>work</b> mounted /srv/&lt;i&gt;&amp;\\u000a\\xff (read-only)."
    summary, body = notify.messages("released", "work", b"/srv/a", "rw")
    assert (summary, body) == ("work released a folder", "<b>work</b> no longer uses /srv/a.")


def test_session_bus_address(tmp_path: Path) -> None:
    assert notify.session_bus({"DBUS_SESSION_BUS_ADDRESS": "unix:path=/x"}) == "unix:path=/x"
    assert notify.session_bus({"XDG_RUNTIME_DIR": str(tmp_path)}) is None
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "bus"))
        assert notify.session_bus({"XDG_RUNTIME_DIR": str(tmp_path)}) == (
            f"unix:path={tmp_path}/bus")


# Live exports


def test_stale_and_foreign_export_records_are_ignored_and_removed(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    with exports.registered("work", b"/srv/a", "ro", env) as path:
        assert path == tmp_path / "qsf" / "exports" / f"{os.getpid()}.json"
        assert os.stat(path).st_mode & 0o777 == 0o600
        directory = path.parent
        dead = subprocess.run(["true"], check=True)  # a pid that has just exited
        del dead
        gone = exports.LiveExport(2**22 + 12345, 1, "mail", b"/x", "rw", 1.0)
        (directory / f"{gone.pid}.json").write_bytes(exports.encode(gone))
        started = exports.process_start(1)
        assert started is not None
        reused = exports.LiveExport(1, started + 1, "mail", b"/x", "rw", 1.0)  # pid 1, other start
        (directory / "1.json").write_bytes(exports.encode(reused))
        (directory / "77.json").write_bytes(b"{garbage")
        (directory / "notes.txt").write_text("not a record")
        [live] = exports.live_exports(env)
        assert (live.pid, live.client, live.folder, live.mode) == (os.getpid(), "work",
                                                                  b"/srv/a", "ro")
        assert sorted(os.listdir(directory)) == [f"{os.getpid()}.json", "notes.txt"]
    assert exports.live_exports(env) == []
    assert not path.exists()


def test_no_runtime_directory_means_no_record_and_no_failure(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "file")}
    (tmp_path / "file").write_text("")  # not a directory: mkdir fails
    with exports.registered("work", b"/srv/a", "rw", env) as path:
        assert path is None


# Through qsf.ConnectToFolder, as qrexec runs it


@pytest.fixture
def fake_dom0_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "qrexec-client-vm"
    program.write_text(FAKE_QREXEC.format(python=sys.executable))
    program.chmod(0o755)
    return bin_dir


class Share:
    """qsf.ConnectToFolder on a socketpair, as the client's end of a qrexec channel."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qsf_server.connect"], stdin=theirs, stdout=theirs,
            stderr=subprocess.PIPE, env=env)
        theirs.close()
        self.ours.sendall(base64.b64encode(os.fsencode(folder)) + b"\n" + TVERSION)
        self.ours.settimeout(WAIT)
        reply = b""
        while len(reply) < len(b"ok rw\n") + 4 or len(reply) < 6 + struct.unpack_from(
                "<I", reply, 6)[0]:
            chunk = self.ours.recv(4096)
            assert chunk, f"ConnectToFolder ended early: {reply!r}"
            reply += chunk
        assert reply.startswith(b"ok rw\n") and reply[10] == 101  # Rversion: serving

    def release(self) -> tuple[int, str]:
        self.ours.close()  # EOF: the client unmounted
        _, err = self.process.communicate(timeout=WAIT)
        return self.process.returncode, err.decode()


def service_env(fake_dom0_bin: Path, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(PATH=f"{fake_dom0_bin}:{env.get('PATH', os.defpath)}",
               QREXEC_REMOTE_DOMAIN="work", QREXEC_SERVICE_ARGUMENT=FP)
    return env


def list_exports(env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-m", "qsf_server", "--list-exports"], env=env,
                            capture_output=True, text=True, timeout=WAIT, check=True)
    return result.stdout


@pytest.fixture(scope="module")
def dunst(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """dunst on Xvfb with a private session bus; yields the session's environment."""
    for program, package in (("Xvfb", "xvfb"), ("dbus-daemon", "dbus-daemon"),
                             ("dunst", "dunst"), ("dunstctl", "dunst"),
                             ("gdbus", "libglib2.0-bin")):
        if shutil.which(program) is None:
            support.missing(f"program {program} (Debian package {package})")
    work = tmp_path_factory.mktemp("notify-session")
    session = XSession(work, accessibility=False)
    try:
        session.start()
    except XSessionError as error:
        pytest.fail(f"could not start the test X session: {error}", pytrace=False)
    env = session.env()
    config = work / "dunstrc"
    config.write_text("[global]\n    history_length = 50\n")
    log = (work / "dunst.log").open("wb")
    daemon = subprocess.Popen(["dunst", "-config", str(config)], env=env, stdout=log,
                              stderr=log, start_new_session=True)
    try:
        wait_for(lambda: subprocess.run(
            ["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus", "/",
             "org.freedesktop.DBus.NameHasOwner", "string:org.freedesktop.Notifications"],
            env=env, capture_output=True, text=True, timeout=WAIT).stdout.count("true"),
            "dunst on the session bus")
        yield env
    finally:
        daemon.terminate()
        daemon.wait(timeout=WAIT)
        log.close()
        session.stop()


def history(env: dict[str, str]) -> list[dict[str, Any]]:
    """Every notification dunst has received, oldest first (displayed ones closed first)."""
    subprocess.run(["dunstctl", "close-all"], env=env, check=True, timeout=WAIT)
    out = subprocess.run(["dunstctl", "history"], env=env, capture_output=True, text=True,
                         check=True, timeout=WAIT).stdout
    entries = json.loads(out)["data"][0]
    return sorted(({k: v["data"] for k, v in e.items()} for e in entries),
                  key=lambda e: e["id"])


def test_notified_when_served_and_released_names_escaped(
    dunst: dict[str, str], fake_dom0_bin: Path, tmp_path: Path
) -> None:
    folder = tmp_path / HOSTILE_NAME  # "</b>" makes it two levels deep
    folder.mkdir(parents=True)
    env = service_env(fake_dom0_bin, dunst)
    before = len(history(dunst))
    share = Share(folder, env)
    served = wait_for(lambda: history(dunst)[before:], "the serving notification")
    escaped = (str(folder).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
               .replace("'", "&#x27;").replace('"', "&quot;"))
    assert [(n["appname"], n["summary"], n["body"]) for n in served] == [
        ("Qubes shared folders", "Sharing a folder with work",
         f"<b>work</b> mounted {escaped} (read-write).")]
    # Listed while it lives, in the runtime directory of the session.
    listed = list_exports(env).splitlines()
    assert listed[0].split() == ["PID", "CLIENT", "MODE", "SINCE", "FOLDER"]
    [row] = listed[1:]
    assert row.split()[:3] == [str(share.process.pid), "work", "rw"]
    assert row.endswith("  " + str(folder))
    status, err = share.release()
    assert status == 0, err
    released = wait_for(lambda: history(dunst)[before + 1:], "the release notification")
    assert [(n["summary"], n["body"]) for n in released] == [
        ("work released a folder", f"<b>work</b> no longer uses {escaped}.")]
    assert list_exports(env).splitlines()[1:] == []
    assert "notification not shown" not in err


def test_no_session_bus_still_serves_at_once(fake_dom0_bin: Path, tmp_path: Path) -> None:
    folder = tmp_path / "share"
    folder.mkdir()
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    base = {k: v for k, v in os.environ.items()
            if k not in ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY")}
    env = service_env(fake_dom0_bin, {**base, "XDG_RUNTIME_DIR": str(runtime)})
    start = time.monotonic()
    share = Share(folder, env)
    assert f"{share.process.pid}.json" in os.listdir(runtime / "qsf" / "exports")
    status, err = share.release()
    assert status == 0, err
    assert time.monotonic() - start < 10
    assert err.count("no session bus: notification not shown") == 2
    assert os.listdir(runtime / "qsf" / "exports") == []


def test_list_exports_usage() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "qsf_server", *args],
                              capture_output=True, text=True, timeout=WAIT, check=False)

    assert "--list-exports" in run("--help").stdout
    assert run("--list-exports", "/srv").returncode == 2
    assert run().returncode == 2
    assert run("--client", "-bad", "/srv").returncode == 2
