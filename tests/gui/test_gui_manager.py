"""The real folder share manager window under Xvfb, read and driven through AT-SPI.

The decisions are made with qvm-folder-share (the installed console script) against
a temporary QSF_DOM0_ROOT; what the window shows and what it saves are checked in
the accessibility tree and read back with `qvm-folder-share list --json`.
The `picture` fixture keeps the window's picture in QSF_SCREENSHOTS_DIR (make screenshots).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import support
from conftest import Atspi, Keys, wait_for

from qsf_dom0 import policy, services
from qsf_dom0.config import Config
from qsf_dom0.manager import STALE_MESSAGE
from qsf_sim.xsession import XSession

APP = "qvm-folder-share-manager"
TITLE = "Folder share manager"
COLUMNS = 7  # client, server, decision, mode, decided, last used, folder
SAMPLE = [
    ("allow", "work", "vault", "/home/user/Documents"),
    ("allow", "--read-only", "personal", "vault", "/home/user/Pictures/Holidays 2026"),
    ("deny", "untrusted", "vault", "/home/user"),
    ("block", "disp4711", "vault"),
    ("allow", "--once", "work", "vault", "/srv/projects/qsf"),
]


class Dom0:
    """qvm-folder-share on a temporary dom0 root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "QSF_DOM0_ROOT": str(root)}
        self.program = support.venv_program("qvm-folder-share")

    def __call__(self, *args: str) -> str:
        result = subprocess.run([self.program, *args], env=self.env, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def rows(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(self("list", "--json"))
        return result

    def use(self, grant: str, client: str, server: str, folder: bytes) -> None:
        """Use a grant as a server qube's qsf.QueryFolderAuthorization call does."""
        stdin = os.memfd_create("query")
        os.write(stdin, client.encode() + b"\n" + base64.b64encode(folder) + b"\n")
        os.lseek(stdin, 0, os.SEEK_SET)
        read, write = os.pipe()
        env = {"QREXEC_REMOTE_DOMAIN": server, "QREXEC_SERVICE_ARGUMENT": grant}
        services.query(stdin, write, env, Config.under(self.root))
        os.close(write)
        os.close(stdin)
        with os.fdopen(read, "rb") as reply:
            assert reply.read().startswith(b"ok ")

    def grants(self) -> list[str]:
        path = Config.under(self.root).grants_dir / policy.GRANTS_FILE
        return [x for x in path.read_text().splitlines() if not x.startswith("#")]


@pytest.fixture
def dom0(tmp_path: Path) -> Dom0:
    made = Dom0(tmp_path / "dom0")
    for args in SAMPLE:
        made(*args)
    return made


@pytest.fixture
def manager(gui_session: XSession, atspi: Atspi, dom0: Dom0
            ) -> Iterator[Callable[..., Any]]:
    """Start the manager; returns its frame in the accessibility tree."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> Any:
        process = subprocess.Popen(
            [support.venv_program(APP), *options],
            env=gui_session.env({**os.environ, "QSF_DOM0_ROOT": str(dom0.root)}))
        started.append(process)
        return atspi.find(atspi.application(APP), "frame", TITLE)

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=20)
    wait_for(lambda: all(atspi.pyatspi.Registry.getDesktop(0).getChildAtIndex(i) is None
                         or atspi.pyatspi.Registry.getDesktop(0).getChildAtIndex(i).name != APP
                         for i in range(atspi.pyatspi.Registry.getDesktop(0).childCount)),
             "the manager to leave the accessibility bus")


def local(iso: str) -> str:
    """An ISO UTC time of `list --json` as the window shows it (local, to the minute)."""
    moment = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def table_rows(atspi: Atspi, frame: Any) -> list[tuple[str, ...]]:
    table = atspi.find(frame, "table", "Remembered decisions")
    cells = atspi.names(table, "table cell")
    return [tuple(cells[i:i + COLUMNS]) for i in range(0, len(cells), COLUMNS)]


def row_cells(atspi: Atspi, frame: Any, folder: str, client: str | None = None) -> list[Any]:
    """The accessible cells of the row of `folder` (and `client`)."""
    table = atspi.find(frame, "table", "Remembered decisions")
    cells = [c for c in atspi.descendants(table) if c.getRoleName() == "table cell"]
    for index in range(0, len(cells), COLUMNS):
        row = cells[index:index + COLUMNS]
        if row[6].name == folder and (client is None or row[0].name == client):
            return row
    pytest.fail(f"no row for {folder}")


def select(atspi: Atspi, frame: Any, folder: str, client: str | None = None) -> None:
    """Select the row of `folder` (and `client`) as a click would: focus one of its cells."""
    cell = row_cells(atspi, frame, folder, client)[6]
    cell.queryComponent().grabFocus()
    wait_for(lambda: atspi.has_state(cell, "selected"), f"the row of {folder} to be selected")


def steady_screenshot(screenshot: Callable[..., Path], path: Path, window: str) -> Path:
    """A screenshot once two in a row are the same (the last change is drawn)."""
    previous = b""

    def steady() -> bool:
        nonlocal previous
        current = screenshot(path, window).read_bytes()
        same = current == previous
        previous = current
        return same

    wait_for(steady, "the window to be drawn")
    return path


def button(atspi: Atspi, frame: Any, name: str) -> Any:
    return atspi.find(frame, "push button", name)


def message(atspi: Atspi, frame: Any) -> str:
    """The text of the message line (the label under the heading)."""
    labels = [n for n in atspi.descendants(frame) if n.getRoleName() == "label"]
    return str(labels[1].name)


def test_lists_every_decision_and_pending_is_not_editable(
    manager: Callable[..., Any], atspi: Atspi, keys: Keys, screenshot: Callable[..., Path],
    picture: Callable[[str, str], Path], dom0: Dom0, tmp_path: Path,
) -> None:
    documents = next(r for r in dom0.rows() if r["folder"] == "/home/user/Documents")
    dom0.use(documents["id"], "work", "vault", b"/home/user/Documents/Reports")
    frame = manager()
    shown = wait_for(lambda: table_rows(atspi, frame) if len(table_rows(atspi, frame)) == 5
                     else None, "five rows")
    stored = {(r["client"], r["folder"]): r for r in dom0.rows()}
    expected = [
        ("disp4711", "vault", "block (everything)", "", "/"),
        ("personal", "vault", "allow always", "read-only", "/home/user/Pictures/Holidays 2026"),
        ("untrusted", "vault", "deny", "", "/home/user"),
        ("work", "vault", "allow always", "read-write", "/home/user/Documents"),
        ("work", "vault", "allow once (pending)", "read-write", "/srv/projects/qsf"),
    ]
    assert [(r[0], r[1], r[2], r[3], r[6]) for r in shown] == expected
    assert [r[5] for r in shown] == ["never"] * 3 + [
        local(stored["work", "/home/user/Documents"]["last_used"]), "never"]
    assert [r[4] for r in shown] == [local(stored[r[0], r[6]]["decided"]) for r in shown]
    # A pending one-time grant (drawn greyed): selected, nothing can be done to it.
    select(atspi, frame, "/srv/projects/qsf")
    for name in ("Revoke", "Make read-only", "Make read-write"):
        assert not atspi.has_state(button(atspi, frame, name), "sensitive"), name
    # A read-write grant can be revoked and made read-only, not read-write.
    select(atspi, frame, "/home/user/Documents")
    assert atspi.has_state(button(atspi, frame, "Revoke"), "sensitive")
    assert atspi.has_state(button(atspi, frame, "Make read-only"), "sensitive")
    assert not atspi.has_state(button(atspi, frame, "Make read-write"), "sensitive")
    # A deny can be revoked and has no mode.
    select(atspi, frame, "/home/user")
    assert atspi.has_state(button(atspi, frame, "Revoke"), "sensitive")
    assert not atspi.has_state(button(atspi, frame, "Make read-only"), "sensitive")
    # A read-only grant can be made read-write.
    select(atspi, frame, "/home/user/Pictures/Holidays 2026")
    assert atspi.has_state(button(atspi, frame, "Make read-write"), "sensitive")
    assert not atspi.has_state(button(atspi, frame, "Make read-only"), "sensitive")
    window = keys.window(TITLE)
    steady_screenshot(screenshot, tmp_path / "drawn.png", window)
    shot = picture("folder-share-manager", window)  # kept for the README by make screenshots
    assert shot.stat().st_size > 10_000


def test_revoke_and_edit_mode(manager: Callable[..., Any], atspi: Atspi, dom0: Dom0) -> None:
    frame = manager()
    wait_for(lambda: len(table_rows(atspi, frame)) == 5, "five rows")
    documents = next(r for r in dom0.rows() if r["folder"] == "/home/user/Documents")
    select(atspi, frame, "/home/user/Documents")
    atspi.press(button(atspi, frame, "Make read-only"))
    wait_for(lambda: ("work", "vault", "allow always", "read-only") in
             [r[:4] for r in table_rows(atspi, frame)], "the grant shown read-only")
    again = next(r for r in dom0.rows() if r["folder"] == "/home/user/Documents")
    assert (again["id"], again["mode"]) == (documents["id"], "ro")
    assert message(atspi, frame) == "work -> vault /home/user/Documents is now read-only"
    select(atspi, frame, "/home/user/Documents")
    atspi.press(button(atspi, frame, "Revoke"))
    wait_for(lambda: len(table_rows(atspi, frame)) == 4, "four rows")
    assert "/home/user/Documents" not in [r["folder"] for r in dom0.rows()]
    assert f"+{documents['id']} " not in " ".join(dom0.grants())
    assert message(atspi, frame).startswith("Revoked: work -> vault allow always")


def test_refuses_a_stale_save_and_reloads(
    manager: Callable[..., Any], atspi: Atspi, dom0: Dom0
) -> None:
    frame = manager("--poll", "3600")  # it will not notice the change by itself
    wait_for(lambda: len(table_rows(atspi, frame)) == 5, "five rows")
    select(atspi, frame, "/home/user/Documents")
    dom0("allow", "mail", "vault", "/srv/mail")  # meanwhile, from a terminal
    atspi.press(button(atspi, frame, "Revoke"))
    wait_for(lambda: message(atspi, frame) == STALE_MESSAGE, "the stale-save message")
    assert "/home/user/Documents" in [r["folder"] for r in dom0.rows()]  # nothing saved
    rows = wait_for(lambda: table_rows(atspi, frame) if len(table_rows(atspi, frame)) == 6
                    else None, "the reloaded list")
    assert ("mail", "vault", "allow always") in [r[:3] for r in rows]
    # Now up to date, the same revoke goes through.
    select(atspi, frame, "/home/user/Documents")
    atspi.press(button(atspi, frame, "Revoke"))
    wait_for(lambda: len(table_rows(atspi, frame)) == 5, "five rows again")
    assert "/home/user/Documents" not in [r["folder"] for r in dom0.rows()]


def test_follows_changes_underneath_and_adds_ahead_of_time(
    manager: Callable[..., Any], atspi: Atspi, dom0: Dom0
) -> None:
    frame = manager("--poll", "0.2")
    wait_for(lambda: len(table_rows(atspi, frame)) == 5, "five rows")
    dom0("revoke", "--client", "untrusted")
    wait_for(lambda: "untrusted" not in [r[0] for r in table_rows(atspi, frame)],
             "the revoked row to go")
    texts = [n for n in atspi.descendants(frame) if n.getRoleName() == "text"]
    by_label = {}
    for node in texts:
        relations = node.getRelationSet()
        for relation in relations:
            if relation.getRelationType() == atspi.pyatspi.RELATION_LABELLED_BY:
                by_label[relation.getTarget(0).name] = node
    assert set(by_label) == {"Client qube", "Server qube", "Folder"}
    by_label["Client qube"].queryEditableText().setTextContents("mail")
    by_label["Server qube"].queryEditableText().setTextContents("vault")
    by_label["Folder"].queryEditableText().setTextContents("/srv/archive/")
    atspi.press(atspi.find(frame, "check box", "Read-only"))
    atspi.press(button(atspi, frame, "Add"))
    wait_for(lambda: ("mail", "vault", "allow always", "read-only") in
             [r[:4] for r in table_rows(atspi, frame)], "the added grant")
    added = next(r for r in dom0.rows() if r["client"] == "mail")
    assert (added["folder"], added["mode"], added["duration"]) == ("/srv/archive", "ro", "always")
    assert f"qsf.ConnectToFolder +{added['id']} mail vault allow" in dom0.grants()
    # A refused one says why and saves nothing.
    by_label["Client qube"].queryEditableText().setTextContents("dom0")
    by_label["Folder"].queryEditableText().setTextContents("/srv")
    atspi.press(button(atspi, frame, "Add"))
    wait_for(lambda: message(atspi, frame).startswith("Not saved: dom0 never"), "the refusal")
    assert "dom0" not in [r["client"] for r in dom0.rows()]
