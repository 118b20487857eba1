"""Asking the user: the Prompt interface and a terminal implementation.

A prompt gets the request and the choices it may offer, and answers. The
qrexec channel is the service's stdin/stdout, so the terminal prompt talks to
the controlling terminal (/dev/tty), never to stdin. Scripted answers for
unattended runs live only in qsf_sim, which passes its own Prompt object to
`qsf_dom0.services`; nothing here reads one from a file or a variable.
"""

from __future__ import annotations

import os
import select
import time
import unicodedata
from dataclasses import dataclass
from typing import Final, Protocol

from qsf_dom0.decisions import Answer, Choice, Request

PROMPT_TIMEOUT: Final = 120.0  # an unanswered prompt denies
MAX_ANSWER: Final = 64

_KEYS: Final = {
    "o": Choice.ALLOW_ONCE,
    "a": Choice.ALLOW_ALWAYS,
    "d": Choice.DENY_ONCE,
    "n": Choice.DENY_ALWAYS,
    "b": Choice.BLOCK,
}
_LABELS: Final = {
    Choice.ALLOW_ONCE: "[o]nce",
    Choice.ALLOW_ALWAYS: "[a]lways",
    Choice.DENY_ONCE: "[d]eny",
    Choice.DENY_ALWAYS: "[n]ever (remember the deny)",
    Choice.BLOCK: "[b]lock everything from this qube to that one",
}


@dataclass(frozen=True, slots=True)
class PromptRequest:
    request: Request
    choices: tuple[Choice, ...]


class Prompt(Protocol):
    def ask(self, prompt: PromptRequest) -> Answer:
        """The user's answer; deny on any doubt (no user, timeout, garbage).

        May raise PromptUnavailable instead when nobody could be asked.
        """
        ...


class PromptUnavailable(Exception):
    """Nobody could be asked; `reason` is the deny reason: nogui or busy."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


DENY: Final = Answer(Choice.DENY_ONCE, "ro")


def display_path(path: bytes) -> str:
    """A folder as text safe to show: undecodable bytes and controls escaped."""
    text = path.decode("utf-8", "backslashreplace")
    return "".join(
        char if unicodedata.category(char)[0] not in "CZ" or char == " " else f"\\u{ord(char):04x}"
        for char in text
    )


def question(prompt: PromptRequest) -> str:
    request = prompt.request
    access = "read-only" if request.mode == "ro" else "read-write"
    offered = ", ".join(_LABELS[choice] for choice in prompt.choices)
    return (
        f"\nqsf: qube {request.client} asks for {access} access to folder\n"
        f"  {display_path(request.folder)}\n"
        f"of qube {request.server}.\n"
        f"Answer {offered} (anything else denies): "
    )


def parse_answer(prompt: PromptRequest, text: str) -> Choice:
    """The choice for a typed answer; deny for anything not offered."""
    choice = _KEYS.get(text.strip().lower()[:1])
    if choice is None or choice not in prompt.choices:
        return Choice.DENY_ONCE
    return choice


class TerminalPrompt:
    """Asks on a terminal (the controlling one by default), with a timeout."""

    def __init__(self, device: str = "/dev/tty", timeout: float = PROMPT_TIMEOUT) -> None:
        self.device = device
        self.timeout = timeout

    def ask(self, prompt: PromptRequest) -> Answer:
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return DENY  # no terminal: nobody to ask
        try:
            deadline = time.monotonic() + self.timeout
            _write(fd, question(prompt))
            choice = parse_answer(prompt, _read_line(fd, deadline))
            if choice not in (Choice.ALLOW_ONCE, Choice.ALLOW_ALWAYS):
                _write(fd, "qsf: denied.\n" if choice is Choice.DENY_ONCE else "qsf: remembered.\n")
                return Answer(choice, "ro")
            mode = "ro"
            if prompt.request.mode == "rw":
                _write(fd, "Allow writing? [y]es, [N]o (read-only): ")
                mode = "rw" if _read_line(fd, deadline).strip().lower() == "y" else "ro"
            _write(fd, f"qsf: allowed ({mode}).\n")
            return Answer(choice, mode)
        except OSError:
            return DENY
        finally:
            os.close(fd)


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8", "backslashreplace")
    while data:
        data = data[os.write(fd, data) :]


def _read_line(fd: int, deadline: float) -> str:
    """One typed line (at most MAX_ANSWER bytes kept); "" on timeout or EOF."""
    kept = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return ""
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return ""
        chunk = os.read(fd, 256)
        if not chunk:
            return ""
        end = min((i for i in (chunk.find(b"\n"), chunk.find(b"\r")) if i >= 0), default=-1)
        kept = (kept + (chunk if end < 0 else chunk[:end]))[:MAX_ANSWER]
        if end >= 0:
            return kept.decode("utf-8", "replace")
