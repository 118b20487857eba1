"""The simulator's prompts: policy `ask` on a terminal, scripted answers, qsf's dialog glue."""

from __future__ import annotations

import os
import pty
import select
import threading
from pathlib import Path

import pytest

from qsf_sim import policy, prompt
from qsf_sim.layout import Qube
from qsf_sim.policy import Request

SYSTEM = {q.name: q for q in (Qube("dom0", "AdminVM"), Qube("work"), Qube("server"),
                              Qube("vault"))}
REQUEST = Request("test.Svc", "+", "work", "server")
DECISION = policy.evaluate(policy.parse_text("test.Svc * work @anyvm ask\n"), REQUEST, SYSTEM)


def read_until(master: int, marker: bytes, shown: bytes = b"") -> bytes:
    while marker not in shown:
        assert select.select([master], [], [], 10)[0], f"no {marker!r} on the terminal: {shown!r}"
        shown += os.read(master, 1024)
    return shown


def ask_on_pty(typed: bytes) -> tuple[prompt.Answer, bytes]:
    """Run the terminal prompt on a pty; the "user" types `typed` once the question shows."""
    master, slave = pty.openpty()
    try:
        result: list[prompt.Answer] = []
        asker = threading.Thread(target=lambda: result.append(
            prompt.TerminalPrompt(os.ttyname(slave)).ask(REQUEST, DECISION)))
        asker.start()
        shown = read_until(master, b"answer")
        os.write(master, typed)
        asker.join(10)
        assert result, "the prompt did not return"
        return result[0], shown
    finally:
        os.close(master)
        os.close(slave)


def test_terminal_prompt_shows_the_call_and_reads_the_answer() -> None:
    answer, shown = ask_on_pty(b"allow vault\n")
    assert answer == prompt.Answer(True, "vault")
    assert b"work asks for test.Svc+ to server" in shown
    assert b"vault" in shown and b"dom0" not in shown


@pytest.mark.parametrize("typed", [b"deny\n", b"yes please\n", b"\n"])
def test_terminal_prompt_denies_anything_else(typed: bytes) -> None:
    assert ask_on_pty(typed)[0].allowed is False


def test_no_terminal_denies() -> None:
    assert prompt.TerminalPrompt("/nonexistent/tty").ask(REQUEST, DECISION).allowed is False


def test_scripted_answers_are_consumed_in_order(tmp_path: Path) -> None:
    (tmp_path / "prompt").mkdir()
    prompt.push_answers(tmp_path, ["allow", "deny", "allow vault"])
    scripted = prompt.ScriptedPrompt(tmp_path)
    answers = [scripted.ask(REQUEST, DECISION) for _ in range(4)]
    assert answers == [prompt.Answer(True), prompt.Answer(False), prompt.Answer(True, "vault"),
                       prompt.Answer(False)]  # none left: deny
    with pytest.raises(ValueError):
        prompt.push_answers(tmp_path, ["allow a b"])


def test_qsf_dialog_on_an_inherited_terminal() -> None:
    dom0_services = pytest.importorskip("qsf_sim.dom0_services")
    from qsf_dom0.decisions import Choice
    from qsf_dom0.decisions import Request as FolderRequest
    from qsf_dom0.prompt import PromptRequest

    request = PromptRequest(FolderRequest("work", "server", b"/home/user/x", "rw"),
                            (Choice.ALLOW_ONCE, Choice.DENY_ONCE))
    master, slave = pty.openpty()
    try:
        result: list[object] = []
        asker = threading.Thread(target=lambda: result.append(
            dom0_services.InheritedTerminalPrompt(slave).ask(request)))
        asker.start()
        shown = read_until(master, b"Answer")
        os.write(master, b"o\n")
        shown = read_until(master, b"writing", shown)
        os.write(master, b"y\n")
        asker.join(10)
    finally:
        os.close(master)
        os.close(slave)
    assert result == [dom0_services.Answer(Choice.ALLOW_ONCE, "rw")]
    assert b"/home/user/x" in shown
