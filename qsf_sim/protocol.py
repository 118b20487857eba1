"""The protocol on a qube's socket (ROOT/sockets/NAME), between a client and the daemon.

One connection carries one call. Everything is a frame: type (1 byte), length
(4 bytes, little endian), then `length` bytes of payload, at most MAX_PAYLOAD.
The socket itself is never half-closed, so the stream can be relayed by anything
that copies bytes (e.g. the virtio-serial multiplexer of a QEMU guest).

    client -> daemon  REQUEST  b"qsf-sim/1\\0" TARGET b"\\0" SERVICE[+ARG]  (first frame)
    daemon -> client  ACCEPT   (empty)  the call is allowed and the service exists:
                                        the data phase starts
                      REFUSE   reason   denied by policy or by the user (exit 126)
                      NOSERVICE reason  allowed, but the target has no such service (127)
                      FAIL     reason   anything else (exit 125); also for a caller whose
                                        SO_PEERCRED uid is not the qube's user
    data phase, both ways:
                      DATA     bytes    stdin of the service (client -> daemon) or its
                                        stdout (daemon -> client); never empty
                      EOF      (empty)  that direction is finished (a half-close)
    daemon -> client  EXIT     int32    the service's exit status (128+N if killed by
                                        signal N), after its stdout EOF; the daemon then
                                        closes the connection.

The caller's identity is the socket it connected to, checked with SO_PEERCRED
against that qube's Unix user: nothing in the frames names the caller.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import struct

MAGIC = b"qsf-sim/1"
HEADER = struct.Struct("<BI")
EXIT_STATUS = struct.Struct("<i")
MAX_PAYLOAD = 64 * 1024
MAX_REQUEST = 1024


class Frame(enum.IntEnum):
    REQUEST = 1
    ACCEPT = 2
    REFUSE = 3
    NOSERVICE = 4
    FAIL = 5
    DATA = 6
    EOF = 7
    EXIT = 8


class ProtocolViolation(Exception):
    """The other end sent something outside this protocol."""


def frame(kind: Frame, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload too large")
    return HEADER.pack(kind, len(payload)) + payload


def request_payload(target: str, service: str) -> bytes:
    return b"\0".join((MAGIC, target.encode(), service.encode()))


def parse_request(payload: bytes) -> tuple[bytes, bytes]:
    """(untrusted target, untrusted service) of a REQUEST payload."""
    parts = payload.split(b"\0")
    if len(parts) != 3 or parts[0] != MAGIC:
        raise ProtocolViolation("malformed request")
    return parts[1], parts[2]


def _check_header(data: bytes) -> tuple[Frame, int]:
    kind, length = HEADER.unpack(data)
    try:
        known = Frame(kind)
    except ValueError:
        raise ProtocolViolation(f"unknown frame type {kind}") from None
    if length > MAX_PAYLOAD:
        raise ProtocolViolation(f"frame of {length} bytes")
    return known, length


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> tuple[Frame, bytes] | None:
    """The next frame from a blocking socket, or None at a clean end of stream."""
    header = _recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    kind, length = _check_header(header)
    payload = _recv_exactly(sock, length) if length else b""
    if payload is None:
        raise ProtocolViolation("truncated frame")
    return kind, payload


async def read_frame_async(reader: asyncio.StreamReader) -> tuple[Frame, bytes] | None:
    """The next frame from a stream, or None at a clean end of stream."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as error:
        if error.partial:
            raise ProtocolViolation("truncated frame") from None
        return None
    kind, length = _check_header(header)
    try:
        payload = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError:
        raise ProtocolViolation("truncated frame") from None
    return kind, payload
