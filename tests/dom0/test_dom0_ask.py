"""Asking in the GUI domain from dom0: GuiPrompt over a fake agent (no GTK here), the
qube directory through an expected-calls fake, and `deny nogui` for every way to fail."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from qubes_fake import ExpectedQubes
from test_dom0_services import B64, authorize, policy_lines, request

from qsf_ask import protocol
from qsf_dom0.ask import GuiPrompt, LocalAgent, QrexecAgent, qrexec_client_command
from qsf_dom0.config import Config
from qsf_dom0.decisions import Answer, Choice, Request, choices_for
from qsf_dom0.prompt import PromptRequest, PromptUnavailable
from qsf_dom0.qubes import QubeLookupError

FOLDER = b"/home/user/share"
REQUEST = Request("work", "vault", FOLDER, "rw")
PROMPT = PromptRequest(REQUEST, choices_for(REQUEST))
EXPECTED_WIRE = protocol.header() + (
    b"client work\nlabel red\nserver vault\nfolder " + B64 + b"\nmode rw\n"
    b"choices allow-once,allow-always,deny-once,deny-always,block\n")


class FakeAgent:
    """A Unix socket answering each connection with the next canned reply (None: close
    without a word; "hang": never answer); records what it received."""

    def __init__(self, path: Path, *replies: bytes | str | None) -> None:
        self.path = path
        self.replies = list(replies)
        self.received: list[bytes] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.hang = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for reply in self.replies:
            connection, _ = self.server.accept()
            with connection:
                data = b""
                while chunk := connection.recv(65536):
                    data += chunk
                self.received.append(data)
                if reply == "hang":
                    self.hang.wait(30)
                elif isinstance(reply, bytes):
                    connection.sendall(reply)

    def close(self) -> None:
        self.hang.set()
        self.server.close()


@pytest.fixture
def agent_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "qsf.AskFolderAccess"


def dom0_directory(label: str = "red") -> ExpectedQubes:
    return ExpectedQubes([("guivm", "work", None), ("label", "work", label)])


@pytest.mark.parametrize(("reply", "answer"), [
    (b"allow-once rw\n", Answer(Choice.ALLOW_ONCE, "rw")),
    (b"allow-always ro\n", Answer(Choice.ALLOW_ALWAYS, "ro")),
    (b"deny-once\n", Answer(Choice.DENY_ONCE, "ro")),
    (b"deny-always\n", Answer(Choice.DENY_ALWAYS, "ro")),
    (b"block\n", Answer(Choice.BLOCK, "ro")),
])
def test_local_agent_answers(agent_path: Path, reply: bytes, answer: Answer) -> None:
    agent = FakeAgent(agent_path, reply)
    directory = dom0_directory()
    try:
        assert GuiPrompt(directory, LocalAgent(agent_path)).ask(PROMPT) == answer
    finally:
        agent.close()
    directory.done()
    assert agent.received == [EXPECTED_WIRE]


@pytest.mark.parametrize("reply", [
    None,  # closed without an answer (the agent refused the request)
    b"", b"allow-once", b"allow-once rwx\n", b"yes\n", b"allow-once rw\nextra\n",
    b"deny-once\n" + b"x" * 100, b"\xff\n",
])
def test_malformed_or_missing_answer_is_nogui(agent_path: Path, reply: bytes | None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    agent = FakeAgent(agent_path, reply)
    try:
        with pytest.raises(PromptUnavailable) as raised:
            GuiPrompt(dom0_directory(), LocalAgent(agent_path)).ask(PROMPT)
    finally:
        agent.close()
    assert raised.value.reason == "nogui"
    assert "no dialog could be shown in dom0" in capsys.readouterr().err


def test_an_answer_the_dialog_may_not_give_is_nogui(agent_path: Path) -> None:
    ro = Request("disp12", "vault", FOLDER, "ro")
    for reply in (b"allow-always ro\n", b"allow-once rw\n"):
        agent = FakeAgent(agent_path, reply)
        directory = ExpectedQubes([("guivm", "disp12", None), ("label", "disp12", "red")])
        try:
            with pytest.raises(PromptUnavailable):
                GuiPrompt(directory, LocalAgent(agent_path)).ask(
                    PromptRequest(ro, choices_for(ro)))
        finally:
            agent.close()
            agent_path.unlink()


def test_no_agent_and_no_answer_in_time(agent_path: Path) -> None:
    with pytest.raises(PromptUnavailable, match="nogui"):
        GuiPrompt(dom0_directory(), LocalAgent(agent_path)).ask(PROMPT)
    agent = FakeAgent(agent_path, "hang")
    try:
        with pytest.raises(PromptUnavailable, match="nogui"):
            GuiPrompt(dom0_directory(), LocalAgent(agent_path), timeout=0.5).ask(PROMPT)
    finally:
        agent.close()


def test_busy_agent(agent_path: Path) -> None:
    agent = FakeAgent(agent_path, b"busy\n")
    try:
        with pytest.raises(PromptUnavailable, match="busy"):
            GuiPrompt(dom0_directory(), LocalAgent(agent_path)).ask(PROMPT)
    finally:
        agent.close()


def test_lookup_failure_is_nogui_and_unknown_label_shows_black(agent_path: Path) -> None:
    directory = ExpectedQubes([("guivm", "work", QubeLookupError("no such qube"))])
    with pytest.raises(PromptUnavailable, match="nogui"):
        GuiPrompt(directory, LocalAgent(agent_path)).ask(PROMPT)
    directory.done()
    agent = FakeAgent(agent_path, b"deny-once\n")
    try:
        GuiPrompt(dom0_directory("chartreuse"), LocalAgent(agent_path)).ask(PROMPT)
    finally:
        agent.close()
    assert b"label black\n" in agent.received[0]


class Remote:
    """An AgentChannel standing in for qrexec-client: records the GUI domain."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.calls: list[tuple[str, bytes]] = []

    def call(self, guivm: str, request: bytes, timeout: float) -> bytes:
        self.calls.append((guivm, request))
        return self.reply


def test_remote_gui_domain_is_asked_through_qrexec(agent_path: Path) -> None:
    directory = ExpectedQubes([("guivm", "work", "sys-gui"), ("label", "work", "green")])
    remote = Remote(b"allow-once ro\n")
    prompt = GuiPrompt(directory, LocalAgent(agent_path), remote)
    assert prompt.ask(PROMPT) == Answer(Choice.ALLOW_ONCE, "ro")
    directory.done()
    [(guivm, sent)] = remote.calls
    assert guivm == "sys-gui"
    assert sent == EXPECTED_WIRE[len(protocol.header()):].replace(b"red", b"green")
    assert qrexec_client_command("sys-gui") == [
        "qrexec-client", "-d", "sys-gui", "DEFAULT:QUBESRPC qsf.AskFolderAccess dom0"]


def test_qrexec_agent_runs_the_command_with_the_request_on_stdin(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    script = (f"import sys; open({str(seen)!r}, 'wb').write(sys.stdin.buffer.read()); "
              "print(sys.argv[1] == 'sys-gui' and 'block' or 'no')")
    channel = QrexecAgent(lambda guivm: [sys.executable, "-c", script, guivm])
    assert channel.call("sys-gui", b"the request", 20) == b"block\n"
    assert seen.read_bytes() == b"the request"
    endless = QrexecAgent(lambda guivm: ["yes"])  # an answer without end is cut short
    assert len(endless.call("sys-gui", b"", 20)) == protocol.MAX_ANSWER + 1


def test_terminal_fallback_only_without_an_agent_socket(agent_path: Path) -> None:
    class Terminal:
        def ask(self, prompt: PromptRequest) -> Answer:
            return Answer(Choice.DENY_ALWAYS, "ro")

    prompt = GuiPrompt(dom0_directory(), LocalAgent(agent_path), fallback=Terminal())
    assert prompt.ask(PROMPT) == Answer(Choice.DENY_ALWAYS, "ro")
    remote = GuiPrompt(ExpectedQubes([("guivm", "work", "sys-gui"), ("label", "work", "red")]),
                       LocalAgent(agent_path), Remote(b""), fallback=Terminal())
    with pytest.raises(PromptUnavailable):  # a GUI qube never falls back to dom0's terminal
        remote.ask(PROMPT)


def test_authorize_replies_nogui_and_stores_nothing(tmp_path: Path) -> None:
    config = Config.under(tmp_path)
    prompt = GuiPrompt(dom0_directory(), LocalAgent(config.ask_socket))
    assert authorize(config, prompt, request()) == "deny nogui\n"
    assert policy_lines(config) == ([], [])
    config.ask_socket.parent.mkdir(parents=True, exist_ok=True)
    agent = FakeAgent(config.ask_socket, b"allow-always ro\n")
    try:
        reply = authorize(config, GuiPrompt(dom0_directory(), LocalAgent(config.ask_socket)),
                          request())
    finally:
        agent.close()
    fingerprint = reply.split()[1]
    assert reply == f"allow {fingerprint} ro\n"
    assert policy_lines(config) == (
        [f"qsf.ConnectToFolder +{fingerprint} work vault allow"], [])


def test_installed_service_without_agent_or_terminal_denies_nogui(tmp_path: Path) -> None:
    env = {"PATH": f"{support.VENV_BIN}:/usr/bin:/bin", "QSF_DOM0_ROOT": str(tmp_path),
           "QREXEC_REMOTE_DOMAIN": "work"}
    result = subprocess.run([support.REPO / "qubes-rpc" / "qsf.AuthorizeFolderAccess"],
                            input=request(), env=env, capture_output=True, timeout=60,
                            check=False, start_new_session=True)  # no controlling terminal
    assert (result.returncode, result.stdout) == (0, b"deny nogui\n")
    assert b"qsf.AuthorizeFolderAccess" in result.stderr
    grants = tmp_path / "etc/qubes/policy.d/79-qsf-grants.policy"
    assert not grants.exists() or b"allow" not in grants.read_bytes()
