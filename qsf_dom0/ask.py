"""Asking in the client qube's GUI domain: the dialog prompt of qsf.AuthorizeFolderAccess.

`GuiPrompt` looks up the client's GUI domain (qsf_dom0.qubes; none = dom0), writes
the qsf.AskFolderAccess request (qsf_ask.protocol, the one module of qsf_ask that
dom0 imports: stdlib only) and reads the agent's one answer line, bounded in size
and time. The GUI domain is reached through an `AgentChannel`:
  dom0     `LocalAgent`: connect to the socket service /etc/qubes-rpc/qsf.AskFolderAccess
           (a symlink to qsf-ask-agent's socket) and write qrexec's header first,
           as qrexec does for a socket service;
  another  `QrexecAgent`: `qrexec-client -d GUIVM "DEFAULT:QUBESRPC qsf.AskFolderAccess
           dom0"` (dom0's way to call a service in a qube), the request on its stdin.
No agent, no answer in time, or a malformed answer raise PromptUnavailable("nogui"),
and an agent that has a dialog open already PromptUnavailable("busy").
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Protocol

from qsf_ask import protocol
from qsf_dom0.decisions import Answer, Choice
from qsf_dom0.prompt import PROMPT_TIMEOUT, Prompt, PromptRequest, PromptUnavailable
from qsf_dom0.qubes import ADMIN_QUBE, DEFAULT_LABEL, QubeDirectory, QubeLookupError

ASK_SOCKET: Final = Path("/etc/qubes-rpc") / protocol.SERVICE


class AgentUnavailable(Exception):
    """The agent could not be reached or did not answer."""


class AgentChannel(Protocol):
    def call(self, guivm: str, request: bytes, timeout: float) -> bytes:
        """The agent's raw answer (at most MAX_ANSWER + 1 bytes) to `request` in `guivm`."""
        ...


def _log(message: str) -> None:
    print(f"qsf.AuthorizeFolderAccess: {message}", file=sys.stderr, flush=True)


def _read_bounded(fd: int, deadline: float) -> bytes:
    """What `fd` sends until EOF, at most MAX_ANSWER + 1 bytes (untrusted)."""
    untrusted_data = b""
    while len(untrusted_data) <= protocol.MAX_ANSWER:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AgentUnavailable("no answer in time")
        chunk = os.read(fd, protocol.MAX_ANSWER + 1 - len(untrusted_data))
        if not chunk:
            break
        untrusted_data += chunk
    return untrusted_data


class LocalAgent:
    """The GUI domain is dom0: connect to the socket service itself."""

    def __init__(self, path: Path = ASK_SOCKET) -> None:
        self.path = path

    def available(self) -> bool:
        return self.path.exists()

    def call(self, guivm: str, request: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.path))
                sock.sendall(protocol.header(ADMIN_QUBE) + request)
                sock.shutdown(socket.SHUT_WR)
                return _read_bounded(sock.fileno(), deadline)
        except OSError as error:
            raise AgentUnavailable(f"{self.path}: {error.strerror or error}") from error


def qrexec_client_command(guivm: str) -> list[str]:
    """How dom0 runs a service in a qube (not through policy: dom0 itself calls)."""
    return ["qrexec-client", "-d", guivm, f"DEFAULT:QUBESRPC {protocol.SERVICE} {ADMIN_QUBE}"]


class QrexecAgent:
    """The GUI domain is another qube: call its service through qrexec."""

    def __init__(self, command: Callable[[str], Sequence[str]] = qrexec_client_command) -> None:
        self.command = command

    def call(self, guivm: str, request: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        try:
            process = subprocess.Popen(list(self.command(guivm)), stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as error:
            raise AgentUnavailable(f"qrexec to {guivm}: {error}") from error
        assert process.stdin is not None and process.stdout is not None
        try:
            try:
                process.stdin.write(request)
                process.stdin.close()
            except BrokenPipeError:
                pass
            untrusted_answer = _read_bounded(process.stdout.fileno(), deadline)
        finally:
            process.kill()
            process.wait()
            process.stdout.close()
        return untrusted_answer


class GuiPrompt:
    """Prompt by the dialog in the client's GUI domain.

    `fallback` (the terminal prompt) is used only when the GUI domain is dom0 and
    no agent socket exists at all: a dom0 without a graphical session.
    """

    def __init__(self, directory: QubeDirectory, local: LocalAgent,
                 remote: AgentChannel | None = None, timeout: float = PROMPT_TIMEOUT,
                 fallback: Prompt | None = None) -> None:
        self.directory = directory
        self.local = local
        self.remote = remote if remote is not None else QrexecAgent()
        self.timeout = timeout
        self.fallback = fallback

    def ask(self, prompt: PromptRequest) -> Answer:
        request = prompt.request
        try:
            guivm = self.directory.guivm(request.client) or ADMIN_QUBE
            label = self.directory.label(request.client)
        except QubeLookupError as error:
            _log(f"cannot look up {request.client}: {error}")
            raise PromptUnavailable("nogui") from error
        if label not in protocol.LABELS:
            label = DEFAULT_LABEL
        ask = protocol.AskRequest(request.client, label, request.server, request.folder,
                                  request.mode, tuple(c.value for c in prompt.choices))
        if guivm == ADMIN_QUBE and self.fallback is not None and not self.local.available():
            return self.fallback.ask(prompt)
        channel = self.local if guivm == ADMIN_QUBE else self.remote
        try:
            untrusted_answer = channel.call(guivm, protocol.encode_request(ask), self.timeout)
            answer = protocol.decode_answer(untrusted_answer, ask)
        except (AgentUnavailable, protocol.InvalidRequest) as error:
            _log(f"no dialog could be shown in {guivm}: {error}")
            raise PromptUnavailable("nogui") from error
        if answer is None:
            _log(f"the agent in {guivm} has a dialog open already")
            raise PromptUnavailable("busy")
        return Answer(Choice(answer.choice), answer.mode)
