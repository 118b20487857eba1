"""The terminal prompt, driven through a pseudo-terminal as a user would."""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator

import pytest

from qsf_dom0.decisions import Answer, Choice, Request, choices_for
from qsf_dom0.prompt import PromptRequest, TerminalPrompt, display_path, parse_answer


@pytest.fixture
def terminal() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    name = os.ttyname(slave)
    yield master, name
    os.close(master)
    os.close(slave)


def prompt_request(folder: bytes = b"/home/user/share", mode: str = "rw",
                   client: str = "work") -> PromptRequest:
    request = Request(client, "vault", folder, mode)
    return PromptRequest(request, choices_for(request))


def read_until(master: int, marker: bytes, timeout: float = 10) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        ready, _, _ = select.select([master], [], [], max(0, deadline - time.monotonic()))
        assert ready, f"no {marker!r} on the terminal; saw {seen!r}"
        seen += os.read(master, 4096)
    return seen


def converse(master: int, device: str, prompt: PromptRequest,
             script: list[tuple[bytes, bytes]], timeout: float = 10) -> tuple[Answer, bytes]:
    answers: list[Answer] = []
    thread = threading.Thread(
        target=lambda: answers.append(TerminalPrompt(device, timeout).ask(prompt))
    )
    thread.start()
    shown = b""
    for marker, typed in script:
        shown += read_until(master, marker)
        os.write(master, typed)
    thread.join(timeout + 5)
    assert not thread.is_alive()
    return answers[0], shown


def test_allow_once_read_write(terminal: tuple[int, str]) -> None:
    master, device = terminal
    answer, shown = converse(master, device, prompt_request(),
                             [(b"denies): ", b"o\n"), (b"(read-only): ", b"y\n")])
    assert answer == Answer(Choice.ALLOW_ONCE, "rw")
    assert b"qube work asks for read-write access" in shown
    assert b"/home/user/share" in shown and b"of qube vault" in shown


def test_allow_always_downgraded_to_read_only(terminal: tuple[int, str]) -> None:
    master, device = terminal
    answer, _ = converse(master, device, prompt_request(),
                         [(b"denies): ", b"a\n"), (b"(read-only): ", b"\n")])
    assert answer == Answer(Choice.ALLOW_ALWAYS, "ro")


def test_read_only_request_asks_no_mode(terminal: tuple[int, str]) -> None:
    master, device = terminal
    answer, _ = converse(master, device, prompt_request(mode="ro"), [(b"denies): ", b"b\n")])
    assert answer.choice is Choice.BLOCK


def test_garbage_and_empty_answers_deny(terminal: tuple[int, str]) -> None:
    master, device = terminal
    for typed in (b"\n", b"yes please\n", b"\x1b[A\n"):
        answer, _ = converse(master, device, prompt_request(), [(b"denies): ", typed)])
        assert answer.choice is Choice.DENY_ONCE


def test_disposable_cannot_answer_always(terminal: tuple[int, str]) -> None:
    master, device = terminal
    answer, shown = converse(master, device, prompt_request(client="disp12"),
                             [(b"denies): ", b"a\n")])
    assert answer.choice is Choice.DENY_ONCE
    assert b"[a]lways" not in shown


def test_unanswered_prompt_times_out_to_deny(terminal: tuple[int, str]) -> None:
    master, device = terminal
    started = time.monotonic()
    answer, _ = converse(master, device, prompt_request(), [(b"denies): ", b"")], timeout=0.5)
    assert answer.choice is Choice.DENY_ONCE
    assert time.monotonic() - started < 5


def test_no_terminal_denies() -> None:
    answer = TerminalPrompt("/nonexistent/tty").ask(prompt_request())
    assert answer.choice is Choice.DENY_ONCE


def test_control_characters_in_folder_are_escaped(terminal: tuple[int, str]) -> None:
    master, device = terminal
    folder = b"/home/user/\x1b[2J\x07evil\xff\xfe\nname"
    _, shown = converse(master, device, prompt_request(folder=folder), [(b"denies): ", b"d\n")])
    assert b"\x1b" not in shown and b"\x07" not in shown
    assert display_path(folder).encode() in shown
    assert display_path(folder) == "/home/user/\\u001b[2J\\u0007evil\\xff\\xfe\\u000aname"


def test_parse_answer_only_accepts_offered_choices() -> None:
    request = prompt_request(client="disp1")
    assert parse_answer(request, "always") is Choice.DENY_ONCE
    assert parse_answer(request, " O ") is Choice.ALLOW_ONCE
    assert parse_answer(prompt_request(), "never") is Choice.DENY_ALWAYS
