"""The real folder access dialog under Xvfb: what it shows (read through AT-SPI), the
focus guard, each answer by keyboard and by accessibility action, busy, hostile input."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import support
from ask_helpers import AGENT_APP, TITLE, Call, ask, start_agent
from conftest import Atspi, Keys, pixels, wait_for

from qsf_ask.protocol import CHOICES, AskRequest, encode_request
from qsf_sim.xsession import XSession

FOLDER = b"/home/user/Projects/\xff odd\tname/" + b"a-rather-long-directory-name/" * 4 + b"end"
FOLDER_SHOWN = ("/home/user/Projects/\\xff odd\\u0009name/"
                + "a-rather-long-directory-name/" * 4 + "end")
RW = AskRequest("work", "red", "vault", FOLDER, "rw", CHOICES)
RO = AskRequest("personal", "blue", "vault", b"/srv/music", "ro", CHOICES)
DISP = AskRequest("disp1234", "orange", "vault", b"/srv", "rw",
                  ("allow-once", "deny-once", "deny-always", "block"))


@pytest.fixture
def agent_socket(gui_session: XSession, tmp_path: Path
                 ) -> Iterator[Callable[..., Path]]:
    agents: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> Path:
        path = tmp_path / "agent.sock"
        agents.append(start_agent(gui_session, support.venv_program("qsf-ask-agent"), path,
                                  *options))
        return path

    yield start
    for agent in agents:
        agent.terminate()
        agent.wait(timeout=20)


def dialog(atspi: Atspi) -> Any:
    return atspi.find(atspi.application(AGENT_APP), "frame", TITLE)


def button(atspi: Atspi, frame: Any, name: str) -> Any:
    return atspi.find(frame, "push button", name)


def wait_gone(atspi: Atspi) -> None:
    def gone() -> bool:
        app = atspi.application(AGENT_APP)
        return all(node.getRoleName() != "frame" for node in atspi.descendants(app))

    wait_for(gone, "the dialog to close")


def test_texts_and_focus_guard(agent_socket: Callable[..., Path], atspi: Atspi,
                               gui_session: XSession, tmp_path: Path) -> None:
    delay = 6.0  # generous: the checks below must run within it on a loaded machine
    call = ask(agent_socket("--focus-delay", str(delay)), RW)
    frame = dialog(atspi)
    allow_once = button(atspi, frame, "Allow once")
    allow_always = button(atspi, frame, "Allow always")
    checked_at = time.monotonic()
    early = [atspi.has_state(b, "sensitive") for b in (allow_once, allow_always)]
    # The window got the focus after the request was sent, so it has had it for less
    # than `delay` when this check ran (else the check says nothing).
    assert checked_at - call.sent < delay, "machine too slow for this check"
    assert early == [False, False]
    for name in ("Deny", "Deny always", "Block"):
        assert atspi.has_state(button(atspi, frame, name), "sensitive"), name
    labels = atspi.names(frame, "label")
    for text in ("work", "vault", FOLDER_SHOWN, "read and write", "label colour red",
                 "Qube asking:", "Folder of qube:", "Folder:", "Access asked:"):
        assert text in labels, text
    switch = atspi.find(frame, "toggle button", "Read only")
    assert not atspi.has_state(switch, "checked") and atspi.has_state(switch, "sensitive")
    assert atspi.has_state(button(atspi, frame, "Deny"), "focused")  # the default
    wait_for(lambda: atspi.has_state(allow_once, "sensitive"), "Allow once to be sensitive",
             timeout=delay + 20)
    assert time.monotonic() - call.sent >= delay
    assert atspi.has_state(allow_always, "sensitive")
    atspi.press(allow_once)
    assert call.answer() == b"allow-once rw\n"
    wait_gone(atspi)


@pytest.mark.parametrize(("typed", "expected"), [
    (["Escape"], b"deny-once\n"),
    (["Return"], b"deny-once\n"),
    (["alt+d"], b"deny-once\n"),
    (["alt+o"], b"allow-once rw\n"),
    (["alt+a"], b"allow-always rw\n"),
    (["alt+w"], b"deny-always\n"),
    (["alt+b"], b"block\n"),
    (["alt+r", "alt+o"], b"allow-once ro\n"),
    (["Tab", "Return"], b"allow-always rw\n"),  # from Deny, Tab reaches Allow always
])
def test_keyboard(agent_socket: Callable[..., Path], atspi: Atspi, keys: Keys,
                  typed: list[str], expected: bytes) -> None:
    call = ask(agent_socket(), RW)
    frame = dialog(atspi)
    wait_for(lambda: atspi.has_state(button(atspi, frame, "Allow once"), "sensitive"),
             "the allow buttons to be sensitive")
    keys.focus(keys.window(TITLE))
    for key in typed:
        keys.press(key)
    assert call.answer() == expected
    wait_gone(atspi)


def test_allow_keys_do_nothing_before_the_delay(agent_socket: Callable[..., Path],
                                                atspi: Atspi, keys: Keys) -> None:
    call = ask(agent_socket("--focus-delay", "30"), RW)
    frame = dialog(atspi)
    keys.focus(keys.window(TITLE))
    keys.press("alt+o")
    keys.press("alt+a")
    assert not atspi.has_state(button(atspi, frame, "Allow once"), "sensitive")
    assert call.thread.is_alive()  # no answer yet
    keys.press("alt+w")
    assert call.answer() == b"deny-always\n"


def test_read_only_request_locks_the_switch(agent_socket: Callable[..., Path],
                                            atspi: Atspi) -> None:
    call = ask(agent_socket(), RO)
    frame = dialog(atspi)
    switch = atspi.find(frame, "toggle button", "Read only")
    assert atspi.has_state(switch, "checked") and not atspi.has_state(switch, "sensitive")
    assert "read only" in atspi.names(frame, "label")
    assert "label colour blue" in atspi.names(frame, "label")
    allow = button(atspi, frame, "Allow always")
    wait_for(lambda: atspi.has_state(allow, "sensitive"), "Allow always to be sensitive")
    atspi.press(allow)
    assert call.answer() == b"allow-always ro\n"


def test_disposable_has_no_always_allow(agent_socket: Callable[..., Path], atspi: Atspi,
                                        keys: Keys) -> None:
    call = ask(agent_socket(), DISP)
    frame = dialog(atspi)
    buttons = [n for n in atspi.descendants(frame) if n.getRoleName() == "push button"
               and atspi.has_state(n, "showing")]
    assert [b.name for b in buttons] == ["Block", "Deny always", "Deny", "Allow once"]
    assert "A disposable qube can be allowed only once." in atspi.names(frame, "label")
    wait_for(lambda: atspi.has_state(button(atspi, frame, "Allow once"), "sensitive"),
             "Allow once to be sensitive")
    keys.focus(keys.window(TITLE))
    keys.press("alt+a")  # the hidden button's mnemonic does nothing
    keys.press("alt+o")
    assert call.answer() == b"allow-once rw\n"


def test_one_dialog_at_a_time(agent_socket: Callable[..., Path], atspi: Atspi) -> None:
    path = agent_socket()
    first = ask(path, RW)
    dialog(atspi)
    second = ask(path, RO)
    assert second.answer() == b"busy\n"
    assert first.thread.is_alive()
    atspi.press(button(atspi, dialog(atspi), "Deny"))
    assert first.answer() == b"deny-once\n"


def test_unanswered_dialog_denies_once(agent_socket: Callable[..., Path],
                                       atspi: Atspi) -> None:
    call = ask(agent_socket("--dialog-timeout", "2"), RW)
    dialog(atspi)
    assert call.answer() == b"deny-once\n"
    wait_gone(atspi)


@pytest.mark.parametrize("data", [
    b"qsf.AskFolderAccess work\0",  # not from dom0
    b"qsf.Other dom0\0",
    b"no header at all",
    b"client work\n",
    b"x" * 100_000,
])
def test_hostile_input_gets_no_answer_and_no_dialog(agent_socket: Callable[..., Path],
                                                    atspi: Atspi, data: bytes) -> None:
    path = agent_socket()
    if data.endswith(b"\0"):
        data += encode_request(RW)  # a valid request behind a refused header
    assert Call(path, data).answer() == b""
    # The agent is still there and still answers.
    call = ask(path, RW)
    atspi.press(button(atspi, dialog(atspi), "Block"))
    assert call.answer() == b"block\n"


README_REQUEST = AskRequest("work", "red", "vault",
                            b"/home/user/Documents/projects/2026/annual-report/figures", "rw",
                            CHOICES)


def test_readme_pictures(agent_socket: Callable[..., Path], atspi: Atspi, keys: Keys,
                         picture: Callable[[str, str], Path]) -> None:
    """The dialog as the README shows it: just opened (allow buttons still insensitive),
    ready, and for a disposable qube."""
    path = agent_socket("--focus-delay", "2")
    call = ask(path, README_REQUEST)
    frame = dialog(atspi)
    window = keys.window(TITLE)
    allow = button(atspi, frame, "Allow once")
    before = pixels(picture("dialog-waiting", window))
    assert not atspi.has_state(allow, "sensitive"), "picture not taken within the delay"
    wait_for(lambda: atspi.has_state(allow, "sensitive"), "Allow once to be sensitive")
    # The state changes before the window is drawn again: wait for new pixels.
    wait_for(lambda: pixels(picture("dialog", window)) != before,
             "the dialog to be drawn with its allow buttons sensitive")
    atspi.press(button(atspi, frame, "Deny"))
    assert call.answer() == b"deny-once\n"
    wait_gone(atspi)
    call = ask(path, AskRequest("disp4821", "orange", "vault", b"/home/user/Downloads", "ro",
                                DISP.choices))
    frame = dialog(atspi)
    window = keys.window(TITLE)
    allow = button(atspi, frame, "Allow once")
    before = pixels(picture("dialog-disposable", window))
    assert not atspi.has_state(allow, "sensitive"), "picture not taken within the delay"
    wait_for(lambda: pixels(picture("dialog-disposable", window)) != before,
             "the dialog to be drawn with its allow button sensitive")
    assert atspi.has_state(allow, "sensitive")
    keys.focus(keys.window(TITLE))
    keys.press("Escape")
    assert call.answer() == b"deny-once\n"


OTHER_WINDOW = r"""
import gi
gi.require_version("Gtk", "3.0")
from gi.repository import Gtk
window = Gtk.Window(title="another window")
window.add(Gtk.Entry())
window.connect("destroy", Gtk.main_quit)
window.show_all()
Gtk.main()
"""


def test_losing_the_focus_restarts_the_guard(agent_socket: Callable[..., Path], atspi: Atspi,
                                             keys: Keys, gui_session: XSession,
                                             tmp_path: Path) -> None:
    """A window that pops up over the dialog (focus stolen) makes the allow buttons
    insensitive again, and they wait the whole delay again once the dialog is back."""
    delay = 3.0
    call = ask(agent_socket("--focus-delay", str(delay)), RW)
    frame = dialog(atspi)
    allow = button(atspi, frame, "Allow once")
    wait_for(lambda: atspi.has_state(allow, "sensitive"), "Allow once to be sensitive")
    script = tmp_path / "other_window.py"
    script.write_text(OTHER_WINDOW)
    with subprocess.Popen([sys.executable, str(script)], env=gui_session.env()) as other:
        try:
            keys.focus(keys.window("another window"))
            wait_for(lambda: not atspi.has_state(allow, "sensitive"),
                     "Allow once to be insensitive without the focus")
            assert atspi.has_state(button(atspi, frame, "Deny"), "sensitive")
            window = keys.window(TITLE)
            before = time.monotonic()  # the dialog gets the focus back after this
            keys.focus(window)
            wait_for(lambda: atspi.has_state(frame, "active"), "the dialog to be active")
            if time.monotonic() - before < delay:
                assert not atspi.has_state(allow, "sensitive")
            wait_for(lambda: atspi.has_state(allow, "sensitive"), "Allow once again")
            assert time.monotonic() - before >= delay
        finally:
            other.kill()
    atspi.press(allow)
    assert call.answer() == b"allow-once rw\n"
