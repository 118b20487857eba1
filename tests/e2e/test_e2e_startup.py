"""Issue 9 point 5: shares recorded with --persist come back at session start.

Through qsf_sim for real: the client qube's user records shares, the server qube
is halted (calls to it fail as when Qubes cannot start it) and started again while
`qvm-mount-folder --mount-persistent` is retrying; a denied share is reported on a
real session bus (dbus-daemon, notify-send or gdbus, and a recording notification
server) and never retried.
"""
# The fixtures running_sim and sim come from test_e2e_share (one simulator per module):
# ruff: noqa: F811

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from test_e2e_share import (  # noqa: F401 (fixtures)
    _mounts_under,
    dom0_config,
    mountpoint,
    running_sim,
    share,
    sim,
    wait_until,
)

from qsf_mount import startup
from qsf_sim.sim import Sim

pytestmark = pytest.mark.fuse

RECORDER = Path(__file__).with_name("notification_recorder.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-gi


class SessionBus:
    """dbus-daemon --session and the recording notification server, as one qube's user."""

    def __init__(self, sim: Sim, qube: str) -> None:
        support.need_program("dbus-daemon")
        if subprocess.run([SYSTEM_PYTHON, "-c", "from gi.repository import Gio"],
                          capture_output=True, check=False).returncode != 0:
            support.missing("python3-gi (Debian's PyGObject)")
        self.dir = sim.home(qube) / ".bus"
        assert sim.run(qube, ["mkdir", "-p", str(self.dir)]).returncode == 0
        self.address = f"unix:path={self.dir}/socket"
        self.output = self.dir / "notifications.jsonl"
        self.output.unlink(missing_ok=True)
        self.daemon = sim.popen(qube, ["dbus-daemon", "--session", "--nofork", "--nopidfile",
                                       f"--address={self.address}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until(lambda: (self.dir / "socket").exists()), "dbus-daemon did not start"
        self.recorder = sim.popen(qube, [SYSTEM_PYTHON, str(RECORDER), str(self.output)],
                                  env=self.env, stdout=subprocess.PIPE)
        assert self.recorder.stdout is not None
        assert self.recorder.stdout.readline() == b"ready\n"

    @property
    def env(self) -> dict[str, str]:
        return {"DBUS_SESSION_BUS_ADDRESS": self.address}

    def notifications(self) -> list[dict[str, str]]:
        if not self.output.exists():
            return []
        return [json.loads(line) for line in self.output.read_text().splitlines()]

    def close(self) -> None:
        for process in (self.recorder, self.daemon):
            process.kill()
            process.wait()


@pytest.fixture(autouse=True)
def no_recorded_shares(sim: Sim) -> Iterator[None]:
    store = sim.home("work") / ".config" / "qsf" / "shares.json"
    store.unlink(missing_ok=True)
    yield
    store.unlink(missing_ok=True)


@pytest.fixture
def bus(sim: Sim) -> Iterator[SessionBus]:
    session = SessionBus(sim, "work")
    try:
        yield session
    finally:
        session.close()


def persist(sim: Sim, folder: Path, target: Path, *options: str) -> int:
    result = sim.run("work", ["qvm-mount-folder", "--persist", "--backend=fuse", *options,
                              "server", str(folder), str(target)])
    assert b"recorded for start-up" in result.stderr, result.stderr
    return result.returncode


def test_recorded_shares_come_back_while_the_server_qube_starts_late(
        sim: Sim, bus: SessionBus, tmp_path: Path) -> None:
    assert sim.run("server", ["mkdir", "-p", str(share(sim, "later"))]).returncode == 0
    private = sim.home("server") / "outside"
    kept, late, denied = (mountpoint(sim, "work", name) for name in ("kept", "late", "denied"))
    sim.answer_folder("always rw")  # covers `later` as well
    assert persist(sim, share(sim), kept) == 0  # mounted now, and recorded
    sim.set_running("server", False)
    try:
        assert persist(sim, share(sim, "later"), late) == 7  # recorded, not reachable
        sim.answer_folder("deny")
        assert persist(sim, private, denied) == 3  # recorded, denied
        listed = sim.run("work", ["qvm-mount-folder", "--list"]).stdout.decode().splitlines()
        assert f"qvm://server{share(sim)} {kept} fuse.qsf persistent" in listed
        assert f"qvm://server{share(sim, 'later')} {late} not-mounted persistent" in listed
        prompts = len(sim.folder_prompts())
        sim.answer_folder("deny")  # the denied share asks once more, and only once
        log = tmp_path / "journal"
        with open(log, "wb") as journal:
            mount_all = sim.popen("work", ["qvm-mount-folder", "--mount-persistent",
                                           "--retry-for", "60"],
                                  env=bus.env, stdout=journal, stderr=journal)
        assert wait_until(lambda: b"trying again in" in log.read_bytes(), 60), log.read_text()
    finally:
        sim.set_running("server", True)
    assert mount_all.wait(90) == 1  # one share could not be mounted
    journal_lines = log.read_text().splitlines()
    assert f"qvm-mount-folder: qvm://server{share(sim)} at {kept}: already mounted" \
        in journal_lines
    assert f"qvm-mount-folder: qvm://server{share(sim, 'later')} at {late}: mounted" \
        in journal_lines
    assert any(line.endswith("(exit 3, not retried)") and str(denied) in line
               for line in journal_lines), journal_lines
    assert len(sim.folder_prompts()) == prompts + 1
    mounted = [target for _, target in _mounts_under(sim.root)]
    assert sorted(mounted) == sorted([str(kept), str(late)])  # `kept` not mounted twice
    assert sim.run("work", ["ls", str(late)]).returncode == 0
    assert bus.notifications() == [{
        "app": "qsf", "icon": "dialog-warning",
        "summary": f"Shared folder not mounted: {denied}",
        "body": "dom0: denied by the user"}]

    # At the next start everything mounted is left alone and the denial asked again
    # (dom0's prompt counters reset: it allows 3 prompts a minute per qube).
    for path in dom0_config(sim).state_dir.iterdir():
        path.unlink()
    sim.answer_folder("deny")
    again = sim.run("work", ["qvm-mount-folder", "--mount-persistent", "--retry-for", "0"],
                    env=bus.env)
    assert again.returncode == 1
    assert again.stderr.count(b"already mounted") == 2
    assert len(bus.notifications()) == 2
    # Forgotten, it is not tried any more.
    assert sim.run("work", ["qvm-mount-folder", "--forget", str(denied)]).returncode == 0
    last = sim.run("work", ["qvm-mount-folder", "--mount-persistent"], env=bus.env)
    assert last.returncode == 0, last.stderr
    assert len(bus.notifications()) == 2


def test_a_server_that_never_comes_is_given_up_within_the_bound(sim: Sim,
                                                                bus: SessionBus) -> None:
    target = mountpoint(sim, "work", "never")
    sim.set_running("server", False)
    try:
        sim.answer_folder("always rw")
        assert persist(sim, share(sim), target) == 7
        started = time.monotonic()
        result = sim.run("work", ["qvm-mount-folder", "--mount-persistent", "--retry-for", "3"],
                         env=bus.env)
        elapsed = time.monotonic() - started
    finally:
        sim.set_running("server", True)
    assert result.returncode == 1
    assert result.stderr.count(b"trying again in") == 2  # after 2 s, then the last 1 s
    assert b"giving up after 3 s" in result.stderr
    assert 3 <= elapsed < 30
    assert [n["summary"] for n in bus.notifications()] == [
        f"Shared folder not mounted: {target}"]


def test_gdbus_when_notify_send_is_missing(sim: Sim, bus: SessionBus) -> None:
    """The fallback speaks to the same server (run as the qube's user, on its bus)."""
    code = ("import sys; from qsf_mount import startup; "
            "startup.desktop_notifier({'gdbus': '/usr/bin/gdbus'}.get)(sys.argv[1], sys.argv[2])")
    support.need_program("gdbus")
    result = sim.run("work", [sim.config.python, "-c", code, "summary <x>", "body 'q' <b>"],
                     env=bus.env)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert bus.notifications() == [{"app": "qsf", "icon": "dialog-warning",
                                    "summary": "summary <x>", "body": "body 'q' &lt;b&gt;"}]
    assert startup  # the module under test, imported here for mypy's sake
