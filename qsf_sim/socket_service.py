"""A socket service, run as qrexec-agent runs one: connect, write the header, relay.

    python3 -m qsf_sim.socket_service SOCKET SERVICE[+ARG] SOURCE

The daemon runs this (as the target qube's user) when the service file it found
is a Unix socket, or a symlink to one, as /etc/qubes-rpc/qsf.AskFolderAccess is.
It connects, writes `SERVICE[+ARG] SOURCE\\0`, then copies stdin to the socket
(EOF becomes a half-close) and the socket to stdout until the service closes.
Exit 0 when the service answered and closed; 1 when it could not be reached.
"""

from __future__ import annotations

import os
import select
import socket
import sys
from collections.abc import Sequence


def relay(path: str, header: bytes, stdin: int = 0, stdout: int = 1) -> int:
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    except OSError as error:
        print(f"qsf_sim.socket_service: {path}: {error}", file=sys.stderr)
        return 1
    with sock:
        sock.sendall(header)
        reading = True
        service = sock.fileno()
        while True:
            ready, _, _ = select.select([service, stdin] if reading else [service], [], [])
            if stdin in ready:
                data = os.read(stdin, 65536)
                if data:
                    sock.sendall(data)
                else:
                    sock.shutdown(socket.SHUT_WR)
                    reading = False
            if service in ready:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    return 0
                while data:
                    data = data[os.write(stdout, data):]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        print("usage: python3 -m qsf_sim.socket_service SOCKET SERVICE SOURCE", file=sys.stderr)
        return 2
    path, service, source = args
    return relay(path, f"{service} {source}\0".encode("ascii"))


if __name__ == "__main__":
    sys.exit(main())
