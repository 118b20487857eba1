"""Calling qsf-ask-agent as dom0 would, for the GUI tests (import as `ask_helpers`)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

from conftest import wait_for

from qsf_ask import protocol
from qsf_ask.protocol import AskRequest
from qsf_sim.xsession import XSession

AGENT_APP = "qsf-ask-agent"  # its name on the accessibility bus (the program's name)
TITLE = "Folder access request"


class Call:
    """One request on the agent's socket in a thread; `.answer()` waits for the line."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path = path
        self.data = data
        self.sent = time.monotonic()
        self.result: bytes | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        chunks = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(120)
            sock.connect(str(self.path))
            try:
                sock.sendall(self.data)
                sock.shutdown(socket.SHUT_WR)
                while chunk := sock.recv(256):
                    chunks.append(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the agent closed on us: no answer
        self.result = b"".join(chunks)

    def answer(self, timeout: float = 60) -> bytes:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the agent did not answer"
        assert self.result is not None
        return self.result


def ask(path: Path, request: AskRequest) -> Call:
    return Call(path, protocol.header() + protocol.encode_request(request))


def start_agent(session: XSession, program: str, path: Path, *options: str
                ) -> subprocess.Popen[bytes]:
    log = (path.parent / "agent.log").open("ab")
    with log:
        agent = subprocess.Popen([program, "--socket", str(path), *options],
                                 env=session.env(), stderr=log, stdout=log)
    wait_for(lambda: path.is_socket() or agent.poll() is not None, "the agent's socket")
    assert agent.poll() is None, (path.parent / "agent.log").read_text()
    return agent
