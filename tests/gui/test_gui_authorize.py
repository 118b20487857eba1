"""qsf.AuthorizeFolderAccess asking through the real dialog (dom0 as the GUI domain):
each choice made in the window ends as the right reply, stored decision and policy line."""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from ask_helpers import AGENT_APP, TITLE, start_agent
from conftest import Atspi, wait_for
from qubes_fake import ExpectedQubes

from qsf_dom0 import policy, services
from qsf_dom0.ask import GuiPrompt, LocalAgent
from qsf_dom0.config import Config
from qsf_dom0.decisions import Kind
from qsf_dom0.store import Store
from qsf_sim.xsession import XSession


def authorize(config: Config, prompt: GuiPrompt, data: bytes, client: str) -> str:
    """The service as qrexec runs it: stdin, stdout, QREXEC_REMOTE_DOMAIN."""
    stdin = os.memfd_create("stdin")
    os.write(stdin, data)
    os.lseek(stdin, 0, os.SEEK_SET)
    out_read, out_write = os.pipe()
    try:
        services.authorize(stdin, out_write, {"QREXEC_REMOTE_DOMAIN": client}, config, prompt)
    finally:
        os.close(stdin)
        os.close(out_write)
    with os.fdopen(out_read, "rb") as out:
        return out.read().decode()


def request(mode: str) -> bytes:
    return b"vault\n" + base64.b64encode(b"/home/user/share") + f"\n{mode}\n".encode()


def policy_lines(config: Config) -> tuple[list[str], list[str]]:
    def lines(path: Path) -> list[str]:
        text = path.read_text() if path.exists() else ""
        return [line for line in text.splitlines() if not line.startswith("#")]

    return (lines(config.grants_dir / policy.GRANTS_FILE),
            lines(config.once_dir / policy.ONCE_FILE))


@pytest.fixture
def config(gui_session: XSession, tmp_path: Path) -> Iterator[Config]:
    """dom0's layout under tmp_path, with the agent's socket where packages put it and
    /etc/qubes-rpc/qsf.AskFolderAccess a symlink to it."""
    config = Config.under(tmp_path)
    agent_socket = tmp_path / "var/run/qubes/qsf-ask-agent.sock"
    agent_socket.parent.mkdir(parents=True)
    config.ask_socket.parent.mkdir(parents=True)
    config.ask_socket.symlink_to(agent_socket)
    agent = start_agent(gui_session, support.venv_program("qsf-ask-agent"), agent_socket)
    yield config
    agent.terminate()
    agent.wait(timeout=20)


def ask_in_thread(config: Config, client: str, mode: str) -> tuple[threading.Thread, list[str]]:
    directory = ExpectedQubes([("guivm", client, None), ("label", client, "purple")])
    prompt = GuiPrompt(directory, LocalAgent(config.ask_socket))
    replies: list[str] = []
    thread = threading.Thread(
        target=lambda: replies.append(authorize(config, prompt, request(mode=mode), client)),
        daemon=True)
    thread.start()
    return thread, replies


@pytest.mark.parametrize(("button", "read_only", "reply", "kind", "mode", "line_in"), [
    ("Allow once", False, "allow", Kind.ONCE, "rw", "once"),
    ("Allow once", True, "allow", Kind.ONCE, "ro", "once"),
    ("Allow always", False, "allow", Kind.ALWAYS, "rw", "grants"),
    ("Deny", False, "deny user", None, None, None),
    ("Deny always", False, "deny user", Kind.DENY, "ro", None),
    ("Block", False, "deny block", Kind.BLOCK, "ro", None),
])
def test_each_choice_is_stored(config: Config, atspi: Atspi, button: str, read_only: bool,
                               reply: str, kind: Kind | None, mode: str | None,
                               line_in: str | None) -> None:
    thread, replies = ask_in_thread(config, "work", "rw")
    frame = atspi.find(atspi.application(AGENT_APP), "frame", TITLE)
    assert "label colour purple" in atspi.names(frame, "label")
    target = atspi.find(frame, "push button", button)
    wait_for(lambda: atspi.has_state(target, "sensitive"), f"{button} to be sensitive")
    if read_only:
        atspi.press(atspi.find(frame, "toggle button", "Read only"))
        wait_for(lambda: atspi.has_state(atspi.find(frame, "toggle button", "Read only"),
                                         "checked"), "the switch to be on")
    atspi.press(target)
    thread.join(60)
    [line] = replies
    assert line.startswith(reply)
    decisions = Store(config.store_path).load()
    grants, once = policy_lines(config)
    if kind is None:
        assert (decisions, grants, once) == ([], [], [])
        return
    [decision] = decisions
    assert (decision.client, decision.server, decision.kind, decision.mode) == (
        "work", "vault", kind, mode)
    assert decision.folder == (b"/" if kind is Kind.BLOCK else b"/home/user/share")
    expected = [f"qsf.ConnectToFolder +{decision.fingerprint} work vault allow"]
    assert (grants, once) == ((expected, []) if line_in == "grants" else
                              ([], expected) if line_in == "once" else ([], []))
    if reply == "allow":
        assert line == f"allow {decision.fingerprint} {mode}\n"


def test_no_agent_running_is_deny_nogui(config: Config, tmp_path: Path) -> None:
    agent_socket = config.ask_socket.resolve()
    agent_socket.unlink()  # the agent's socket is gone: as after the agent died
    thread, replies = ask_in_thread(config, "work", "rw")
    thread.join(60)
    assert replies == ["deny nogui\n"]
    assert Store(config.store_path).load() == []
