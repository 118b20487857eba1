"""qsf-ask-agent: serves the socket service qsf.AskFolderAccess in the user's session.

Started by XDG autostart (qsf-ask-agent.desktop) in the graphical session of dom0
or of a GUI domain (sys-gui), so it has that session's display and D-Bus: no
display is assumed. It listens on a Unix socket (default
/var/run/qubes/qsf-ask-agent.sock); /etc/qubes-rpc/qsf.AskFolderAccess is a
symlink to it, so qrexec runs the service by connecting there, as Qubes does
for policy.Ask. Each connection carries qrexec's header, then dom0's request,
then EOF; the agent shows one dialog and writes one answer line. A second
request while a dialog is open is answered `busy`. Everything read is
untrusted and validated (qsf_ask.protocol); a bad request is logged and closed
without an answer, which dom0 counts as "no dialog could be shown".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from qsf_ask import protocol

DEFAULT_SOCKET: Final = Path("/var/run/qubes/qsf-ask-agent.sock")
READ_TIMEOUT: Final = 10.0  # the request, header to EOF, must arrive within this
MAX_INPUT: Final = protocol.MAX_HEADER + protocol.MAX_REQUEST


def log(message: str) -> None:
    print(f"qsf-ask-agent: {message}", file=sys.stderr, flush=True)


def split_input(untrusted_data: bytes) -> protocol.AskRequest:
    """Header and request of one connection, validated; only dom0 may ask."""
    untrusted_header, nul, untrusted_body = untrusted_data.partition(b"\0")
    if not nul or len(untrusted_header) > protocol.MAX_HEADER:
        raise protocol.InvalidRequest("no qrexec header")
    service, source = protocol.parse_header(untrusted_header)
    if service != protocol.SERVICE:
        raise protocol.InvalidRequest(f"called as {service!r}")
    if source != protocol.SOURCE:
        raise protocol.InvalidRequest(f"called by {source}, not dom0")
    return protocol.decode_request(untrusted_body)


def listen(path: Path) -> socket.socket:
    """A listening socket at `path` (mode 0600: the session's user; root passes anyway)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SystemExit(f"qsf-ask-agent: {path} exists and is not a socket")
        path.unlink()  # left by an agent that died
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old)
    server.listen(8)
    server.setblocking(False)
    return server


class Agent:
    """The socket server on the GLib main loop; one dialog at a time."""

    def __init__(self, server: socket.socket, *, focus_delay: float | None = None,
                 dialog_timeout: float | None = None) -> None:
        from gi.repository import GLib

        self.glib: Any = GLib
        self.server = server
        self.focus_delay = focus_delay
        self.dialog_timeout = dialog_timeout
        self.busy = False
        GLib.io_add_watch(server.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN, self._accept)

    def _accept(self, *_args: Any) -> bool:
        try:
            connection, _ = self.server.accept()
        except BlockingIOError:
            return True
        connection.setblocking(False)
        Connection(self, connection)
        return True

    def ask(self, connection: Connection, request: protocol.AskRequest) -> None:
        if self.busy:
            log(f"{request.client} -> {request.server}: a dialog is open, answered busy")
            connection.answer(None)
            return
        from qsf_ask.dialog import FolderDialog

        self.busy = True

        def answered(answer: protocol.AskAnswer) -> None:
            self.busy = False
            log(f"{request.client} -> {request.server}: {answer.choice} {answer.mode}")
            connection.answer(answer)

        options: dict[str, Any] = {}
        if self.focus_delay is not None:
            options["focus_delay"] = self.focus_delay
        if self.dialog_timeout is not None:
            options["timeout"] = self.dialog_timeout
        FolderDialog(request, answered, **options).show()


class Connection:
    """One call: read (bounded, with a deadline) to EOF, then ask, then answer."""

    def __init__(self, agent: Agent, sock: socket.socket) -> None:
        self.agent = agent
        self.sock = sock
        self.untrusted_data = b""
        glib = agent.glib
        self.watch = glib.io_add_watch(sock.fileno(), glib.PRIORITY_DEFAULT,
                                       glib.IO_IN | glib.IO_HUP | glib.IO_ERR, self._readable)
        self.deadline = glib.timeout_add(int(READ_TIMEOUT * 1000), self._too_slow)

    def _readable(self, *_args: Any) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError as error:
            log(f"reading a request: {error}")
            self._stop_reading()
            self.close()
            return False
        if chunk:
            self.untrusted_data += chunk
            if len(self.untrusted_data) <= MAX_INPUT:
                return True
            log("request too long: closed")
            self._stop_reading()
            self.close()
            return False
        self._stop_reading()
        try:
            request = split_input(self.untrusted_data)
        except protocol.InvalidRequest as error:
            log(f"invalid request, closed without an answer: {error}")
            self.close()
            return False
        self.agent.ask(self, request)
        return False

    def _stop_reading(self) -> None:
        self.agent.glib.source_remove(self.deadline)

    def _too_slow(self) -> bool:
        log(f"no complete request within {READ_TIMEOUT:.0f} s: closed")
        self.agent.glib.source_remove(self.watch)
        self.close()
        return False

    def answer(self, answer: protocol.AskAnswer | None) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(READ_TIMEOUT)
            self.sock.sendall(protocol.encode_answer(answer))
        except OSError as error:
            log(f"could not answer (dom0 gave up?): {error}")
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


parser = argparse.ArgumentParser(
    prog="qsf-ask-agent",
    description="""\
Serve qsf's folder access dialog (the qrexec socket service qsf.AskFolderAccess)
in this graphical session. Started at login by XDG autostart
(/etc/xdg/autostart/qsf-ask-agent.desktop) in dom0 and in a GUI domain such as
sys-gui; /etc/qubes-rpc/qsf.AskFolderAccess must be a symlink to its socket.
Without it running, dom0 denies folder requests with "deny nogui".""",
)
parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET,
                    help=f"the socket to listen on (default {DEFAULT_SOCKET})")
parser.add_argument("--dialog-timeout", type=float, default=None, metavar="SECONDS",
                    help="deny once when a dialog is not answered within this (default 110)")
parser.add_argument("--focus-delay", type=float, default=None, help=argparse.SUPPRESS)


def main(args: Sequence[str] | None = None) -> int:
    options = parser.parse_args(args)
    import gi

    gi.require_version("Gtk", "3.0")
    from gi.repository import Gtk

    if not Gtk.init_check(sys.argv[:1])[0]:
        log("cannot open the display (is this the graphical session?)")
        return 1
    from gi.repository import GLib

    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, number, Gtk.main_quit)
    server = listen(options.socket)
    Agent(server, focus_delay=options.focus_delay, dialog_timeout=options.dialog_timeout)
    log(f"listening on {options.socket}")
    started = time.monotonic()
    try:
        Gtk.main()
    finally:
        server.close()
        with contextlib.suppress(OSError):
            options.socket.unlink()
    log(f"stopped after {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
