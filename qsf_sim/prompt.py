"""The answer to a qrexec policy `ask` line: from a terminal, or scripted by a test.

Scripted answers are lines in ROOT/prompt/answers (root only), consumed one per
prompt, oldest first: `allow`, `allow TARGET` or `deny`. With no answer left the
call is denied. Every prompt and its answer is appended to ROOT/prompt/log as one
JSON object per line, so that a test can check that it was (not) asked.
These answers exist only inside the simulator.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from qsf_sim.layout import prompt_dir
from qsf_sim.policy import Decision, Request

ANSWERS = "answers"
LOG = "log"
MAX_ANSWER = 200
TERMINAL_TIMEOUT = 300.0  # an unanswered prompt denies


@dataclass(frozen=True)
class Answer:
    allowed: bool
    target: str | None = None

    @classmethod
    def parse(cls, text: str) -> Answer:
        words = text.split()
        if words == ["deny"]:
            return cls(False)
        if words and words[0] == "allow" and len(words) <= 2:
            return cls(True, words[1] if len(words) == 2 else None)
        raise ValueError(f"not an answer: {text!r} (allow [TARGET] | deny)")

    def __str__(self) -> str:
        if not self.allowed:
            return "deny"
        return "allow" if self.target is None else f"allow {self.target}"


class Prompter(Protocol):
    def ask(self, request: Request, decision: Decision) -> Answer: ...


def question(request: Request, decision: Decision) -> str:
    choices = ", ".join(decision.targets_for_ask)
    default = f" [default: {decision.default_target}]" if decision.default_target else ""
    return (f"qrexec: {request.source} asks for {request.service}{request.argument} "
            f"to {request.target or '@default'}.\n  targets: {choices}{default}\n"
            "  answer 'allow [TARGET]' or 'deny': ")


class ScriptedPrompt:
    def __init__(self, root: Path) -> None:
        self.directory = prompt_dir(root)

    def ask(self, request: Request, decision: Decision) -> Answer:
        with open(self.directory / ANSWERS, "a+", encoding="utf-8") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            file.seek(0)
            lines = file.read().splitlines()
            if not lines:
                return Answer(False)
            file.seek(0)
            file.truncate()
            file.write("".join(line + "\n" for line in lines[1:]))
        try:
            return Answer.parse(lines[0])
        except ValueError:
            return Answer(False)


class TerminalPrompt:
    """Asks on the daemon's controlling terminal (or another terminal device)."""

    def __init__(self, device: str = "/dev/tty", timeout: float = TERMINAL_TIMEOUT) -> None:
        self.device = device
        self.timeout = timeout

    def ask(self, request: Request, decision: Decision) -> Answer:
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return Answer(False)  # nobody to ask
        try:
            data = question(request, decision).encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(fd, data):]
            return Answer.parse(_read_line(fd, time.monotonic() + self.timeout))
        except (OSError, ValueError):
            return Answer(False)
        finally:
            os.close(fd)


def _read_line(fd: int, deadline: float) -> str:
    """One typed line (at most MAX_ANSWER bytes); "" on timeout or end of file."""
    kept = b""
    while len(kept) <= MAX_ANSWER:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return ""
        chunk = os.read(fd, 256)
        if not chunk:
            return ""
        kept += chunk
        for end in (b"\n", b"\r"):
            if end in kept:
                return kept.split(end, 1)[0].decode("utf-8", "replace")
    return ""


def push_answers(root: Path, answers: Sequence[str]) -> None:
    """Queue scripted answers (validated) for the next prompts."""
    lines = [str(Answer.parse(a)) for a in answers]
    with open(prompt_dir(root) / ANSWERS, "a", encoding="utf-8") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.write("".join(line + "\n" for line in lines))


def read_log(root: Path) -> list[dict[str, object]]:
    try:
        text = (prompt_dir(root) / LOG).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line]


class PromptService:
    """One prompt at a time, run off the event loop, each one logged."""

    def __init__(self, root: Path, prompter: Prompter) -> None:
        self.root = root
        self.prompter = prompter
        self.lock = asyncio.Lock()

    async def ask(self, request: Request, decision: Decision) -> Answer:
        async with self.lock:
            answer = await asyncio.to_thread(self.prompter.ask, request, decision)
        entry = {"source": request.source, "target": request.target,
                 "service": request.service, "argument": request.argument,
                 "choices": list(decision.targets_for_ask),
                 "default": decision.default_target, "answer": str(answer)}
        log = prompt_dir(self.root) / LOG
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(fd, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")
        return answer
