"""Shares recorded for start-up: the store, --persist/--forget/--list, and mount-all.

The mount-all tests drive qvm-mount-folder --mount-persistent with faked side
effects and a fake clock (the `sleep` calls are part of the expected-calls table).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from test_mount_cli import (
    CONNECT,
    FP,
    MOUNTPOINT_OK,
    SEND,
    FakeSystem,
    authorize_call,
    fuse_run,
    run,
)

from qsf_mount import persistent, startup
from qsf_mount.request import MountRequest, build

ARGS = ["vault", "/home/user/share", "/mnt/share"]
SOURCE = "qvm://vault/home/user/share"
MOUNTED = f"{SOURCE} /mnt/share fuse.qsf rw,nosuid,nodev 0 0\n"
FSNAME = "fsname=qvm://vault/home/user/share,subtype=qsf"
MOUNT_OK = [
    authorize_call(f"allow {FP} rw\n".encode()),
    CONNECT, SEND, ("channel.read_line", (64,), b"ok rw"),
    fuse_run(FSNAME),
    ("channel.detach", (), None),
]


def request(mountpoint: str = "/mnt/share", server: str = "vault",
            folder: str = "/home/user/share", **fields: Any) -> MountRequest:
    return build(server=server, folder=folder, mountpoint=mountpoint, **fields)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "config" / "qsf" / "shares.json"


def recorded(store: Path) -> list[dict[str, object]]:
    document = json.loads(store.read_text())
    assert document["version"] == 1
    return document["shares"]  # type: ignore[no-any-return]


# --- the store ------------------------------------------------------------------------


def test_store_path_follows_xdg_config_home() -> None:
    assert persistent.store_path({"XDG_CONFIG_HOME": "/c", "HOME": "/h"}) == Path(
        "/c/qsf/shares.json")
    for environ in ({"HOME": "/h"}, {"XDG_CONFIG_HOME": "relative", "HOME": "/h"}):
        assert persistent.store_path(environ) == Path("/h/.config/qsf/shares.json")


def test_round_trip_keeps_every_field_and_non_utf8_names(store: Path) -> None:
    shares = [request(), request("/mnt/b", "work", "/srv/caf\udce9", backend="fuse",
                                 read_only=True, options="noexec,timeout=5")]
    persistent.update(store, lambda _: shares)
    assert persistent.load(store) == shares
    assert persistent.load(store)[1].folder == b"/srv/caf\xe9"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert [p.name for p in store.parent.iterdir()] == ["shares.json"]  # no temp file left


@pytest.mark.parametrize(
    ("text", "fault"),
    [("{", "Expecting"), ("[]", '"version" and "shares"'),
     ('{"version": 2, "shares": []}', "unknown format version 2"),
     ('{"version": 1, "shares": {}}', "must be a list"),
     ('{"version": 1, "shares": [], "x": 1}', '"version" and "shares"'),
     ('{"version": 1, "shares": [{"server": "vault"}]}', "share 1: expected an object"),
     ("BAD_NAME", "share 1: 'dom 0' is not a qube name"),
     ("BAD_FOLDER", "share 1: FOLDER must not contain '..'"),
     ("BAD_TYPE", "share 1: read_only must be a bool"),
     ("RELATIVE", "share 1: mountpoint must be an absolute, normalised path"),
     ("RESERVED", "share 1: -o fsname=x: qvm-mount-folder sets this option itself"),
     ("TWICE", "share 2: /mnt/share is recorded twice"),
     ("\udcff", "codec can't decode")],
)
def test_a_broken_store_is_reported_and_never_rewritten(store: Path, text: str, fault: str,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    entry = persistent.to_json(request())
    broken = {"BAD_NAME": {**entry, "server": "dom 0"},
              "BAD_FOLDER": {**entry, "folder": "/a/../b"},
              "BAD_TYPE": {**entry, "read_only": "no"},
              "RELATIVE": {**entry, "mountpoint": "mnt"},
              "RESERVED": {**entry, "options": "fsname=x"}}
    if text in broken:
        text = json.dumps({"version": 1, "shares": [broken[text]]})
    elif text == "TWICE":
        text = json.dumps({"version": 1, "shares": [entry, entry]})
    store.parent.mkdir(parents=True)
    data = text.encode("utf-8", "surrogateescape")
    store.write_bytes(data)
    with pytest.raises(persistent.StoreError) as error:
        persistent.load(store)
    assert str(error.value).startswith(f"{store}: ") and fault in str(error.value)
    system = FakeSystem([("read_mounts", (), ""), MOUNTPOINT_OK], store=store)
    assert run(system, ["--persist", *ARGS]) == 1
    err = capsys.readouterr().err
    assert fault in err and "nothing recorded" in err and err.count("\n") == 1
    assert run(FakeSystem([], store=store), ["--forget", "/mnt/share"]) == 1
    assert store.read_bytes() == data


def test_concurrent_updates_lose_nothing(store: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_many, args=(store, name)) for name in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len(persistent.load(store)) == 40


def _add_many(store: Path, name: str) -> None:
    for number in range(20):
        share = request(f"/mnt/{name}{number}")
        persistent.update(store, lambda shares, share=share: [*shares, share])  # type: ignore[misc]


# --- --persist, --forget, --list ------------------------------------------------------


def test_persist_records_then_mounts(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem([("read_mounts", (), ""), MOUNTPOINT_OK, *MOUNT_OK], store=store)
    assert run(system, ["--persist", "--backend=fuse", *ARGS]) == 0
    assert recorded(store) == [{"server": "vault", "folder": "/home/user/share",
                                "mountpoint": "/mnt/share", "backend": "fuse",
                                "read_only": False, "options": ""}]
    assert capsys.readouterr().err == f"qvm-mount-folder: recorded for start-up in {store}\n"


def test_persist_of_a_mounted_share_records_it_only(store: Path) -> None:
    system = FakeSystem([("read_mounts", (), MOUNTED)], store=store)
    assert run(system, ["--persist", *ARGS]) == 0
    assert len(recorded(store)) == 1


def test_persist_replaces_the_share_of_the_same_mount_point(store: Path) -> None:
    persistent.update(store, lambda _: [request(), request("/mnt/other")])
    system = FakeSystem([("read_mounts", (), MOUNTED)], store=store)
    assert run(system, ["--persist", "--read-only", *ARGS]) == 0
    assert [(s["mountpoint"], s["read_only"]) for s in recorded(store)] == [
        ("/mnt/other", False), ("/mnt/share", True)]


def test_persist_with_a_bad_mount_point_records_nothing(store: Path) -> None:
    system = FakeSystem([("read_mounts", (), ""),
                         ("mount_point_problem", ("/mnt/share",), "does not exist")], store=store)
    assert run(system, ["--persist", *ARGS]) == 6
    assert not store.exists()


def test_a_failed_mount_stays_recorded(store: Path) -> None:
    system = FakeSystem([("read_mounts", (), ""), MOUNTPOINT_OK,
                         authorize_call(b"deny user\n")], store=store)
    assert run(system, ["--persist", *ARGS]) == 3
    assert len(recorded(store)) == 1


def test_forget(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(FakeSystem([], store=store), ["--forget", "/mnt/share"]) == 6
    persistent.update(store, lambda _: [request(), request("/mnt/other")])
    assert run(FakeSystem([], store=store), ["--forget", "/mnt/share/"]) == 0
    assert [s["mountpoint"] for s in recorded(store)] == ["/mnt/other"]
    assert run(FakeSystem([], store=store), ["--forget", "/mnt/share"]) == 6
    assert "not a recorded share" in capsys.readouterr().err


def test_list_marks_recorded_shares(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    persistent.update(store, lambda _: [request(), request("/mnt/later", "work", "/srv/x y")])
    table = MOUNTED + "qvm://mail/srv /mnt/k 9p rw,trans=fd 0 0\n"
    assert run(FakeSystem([("read_mounts", (), table)], store=store), ["--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{SOURCE} /mnt/share fuse.qsf persistent",
        "qvm://mail/srv /mnt/k 9p",
        "qvm://work/srv/x%20y /mnt/later not-mounted persistent",
    ]
    store.write_text("{}")
    assert run(FakeSystem([("read_mounts", (), table)], store=store), ["--list"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{SOURCE} /mnt/share fuse.qsf", "qvm://mail/srv /mnt/k 9p"]
    assert "fix or remove the file" in err


@pytest.mark.parametrize("args", [
    ["--persist", "--foreground", *ARGS], ["--persist", "--list"],
    ["--forget", "/mnt", *ARGS], ["--mount-persistent", *ARGS],
    ["--mount-persistent", "--retry-for", "-1"], ["--mount-persistent", "--list"],
])
def test_usage_errors(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(FakeSystem([]), args)
    assert exit_info.value.code == 2


# --- mount-all: retry schedule and which failures are final ---------------------------


def test_backoff_doubles_up_to_the_longest_pause_and_the_total() -> None:
    assert list(startup.Backoff().pauses()) == [2, 4, 8, 16, 32, 60, 60, 60, 58]
    assert sum(startup.Backoff(total=10).pauses()) == 10
    assert list(startup.Backoff(total=0).pauses()) == []
    for bad in ({"first": 0}, {"factor": 0.5}, {"longest": 1}, {"total": -1}):
        with pytest.raises(ValueError, match="not a bounded back-off"):
            startup.Backoff(**bad)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        assert seconds > 0  # never a busy loop
        self.sleeps.append(seconds)
        self.now += seconds


def test_mount_all_retries_only_the_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    results = {"/a": [7, 7, 0], "/b": [3], "/c": [5], "/d": [0], "/e": [2], "/f": [1]}
    tried: list[tuple[float, str]] = []
    notes: list[tuple[str, str]] = []

    def attempt(share: MountRequest) -> tuple[int, str]:
        tried.append((clock.now, share.mountpoint))
        return results[share.mountpoint].pop(0), "what happened"

    shares = [request(name) for name in results]
    code = startup.mount_all(shares, attempt, clock, lambda *n: notes.append(n))
    assert code == 1
    assert clock.sleeps == [2, 4]
    assert [t for t in tried if t[1] == "/a"] == [(0, "/a"), (2, "/a"), (6, "/a")]
    assert len(tried) == 8  # the others once each
    assert [summary for summary, _ in notes] == [
        f"Shared folder not mounted: /{name}" for name in "bcef"]
    log = capsys.readouterr().err.splitlines()
    assert "qvm-mount-folder: qvm://vault/home/user/share at /b: what happened " \
           "(exit 3, not retried)" in log
    assert "qvm-mount-folder: qvm://vault/home/user/share at /a: what happened; " \
           "trying again in 2 s" in log


def test_mount_all_gives_up_after_the_total_and_says_so() -> None:
    clock = FakeClock()
    notes: list[tuple[str, str]] = []
    code = startup.mount_all([request("/a")], lambda _: (7, "unreachable"), clock,
                             lambda *n: notes.append(n), startup.Backoff(total=20))
    assert code == 1
    assert clock.sleeps == [2, 4, 8, 6] and clock.now == 20
    assert notes == [("Shared folder not mounted: /a", "unreachable; gave up after 20 s")]


def test_mount_persistent_through_the_command(store: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Share 1 is mounted already, share 2's server is down once, share 3 is denied."""
    persistent.update(store, lambda _: [request(), request("/mnt/two", backend="fuse"),
                                        request("/mnt/three", backend="fuse")])
    two = "fsname=qvm://vault/home/user/share,subtype=qsf"
    system = FakeSystem([
        ("read_mounts", (), MOUNTED),
        ("read_mounts", (), MOUNTED),
        ("mount_point_problem", ("/mnt/two",), None),
        authorize_call(f"allow {FP} rw\n".encode()),
        CONNECT, SEND, ("channel.read_line", (64,), None), ("channel.wait", (), 125),
        ("channel.abort", (), None),
        ("read_mounts", (), MOUNTED),
        ("mount_point_problem", ("/mnt/three",), None),
        authorize_call(b"deny user\n"),
        ("notify", ("Shared folder not mounted: /mnt/three", "dom0: denied by the user"), None),
        ("sleep", (2.0,), None),
        ("read_mounts", (), MOUNTED),
        ("mount_point_problem", ("/mnt/two",), None),
        authorize_call(f"allow {FP} rw\n".encode()),
        CONNECT, SEND, ("channel.read_line", (64,), b"ok rw"),
        ("run", ([*fuse_run(two)[1][0][:-1], "/mnt/two"], (10, 11)), 0),
        ("channel.detach", (), None),
    ], store=store)
    assert run(system, ["--mount-persistent", "--retry-for", "30"]) == 1
    log = capsys.readouterr().err
    assert "at /mnt/share: already mounted" in log
    assert "at /mnt/two: mounted" in log
    assert "cannot reach qsf.ConnectToFolder in qube vault (qrexec exit 125); " \
           "trying again in 2 s" in log


def test_mount_persistent_without_shares(store: Path) -> None:
    assert run(FakeSystem([], store=store), ["--mount-persistent"]) == 0


# --- desktop notifications --------------------------------------------------------------


def test_notify_send_first_then_gdbus() -> None:
    both = {"notify-send": "/usr/bin/notify-send", "gdbus": "/usr/bin/gdbus"}
    argv = startup.notify_argv(both.get, "Shared folder not mounted: /m", "a <b> & 'c'\x1b")
    assert argv == ["/usr/bin/notify-send", "--app-name=qsf", "--icon=dialog-warning", "--",
                    "Shared folder not mounted: /m",
                    "a &lt;b&gt; &amp; 'c'\N{REPLACEMENT CHARACTER}"]
    argv = startup.notify_argv({"gdbus": "/usr/bin/gdbus"}.get, "s", "it's \\ here")
    assert argv is not None and argv[:3] == ["/usr/bin/gdbus", "call", "--session"]
    assert argv[-8:] == ["'qsf'", "uint32 0", "'dialog-warning'", "'s'", "'it\\'s \\\\ here'",
                         "@as []", "@a{sv} {}", "int32 -1"]
    assert startup.notify_argv(lambda _: None, "s", "b") is None


def test_session_bus_detection(tmp_path: Path) -> None:
    assert startup.session_bus({"DBUS_SESSION_BUS_ADDRESS": "unix:path=/x"})
    assert not startup.session_bus({"XDG_RUNTIME_DIR": str(tmp_path)})
    (tmp_path / "bus").touch()
    assert startup.session_bus({"XDG_RUNTIME_DIR": str(tmp_path)})
    assert not startup.session_bus({})


def test_no_session_bus_only_logs(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    startup.desktop_notifier(lambda _: os.devnull)("s", "b")  # would fail if it ran
    assert capsys.readouterr().err == "qvm-mount-folder: no session bus: no desktop notification\n"
