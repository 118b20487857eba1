"""Many qrexec calls over one virtio-serial port: a stream multiplexer.

A QEMU guest plays a qube. Its qrexec channel is one virtio-serial port, which
can be opened only once, so every call the guest makes travels on it as a
numbered stream:

    guest: programs --connect--> `guest` end (Unix socket, QSF_SIM_QREXEC_SOCKET)
             == frames over the port (QEMU chardev socket on the host) ==>
    host:  `host` end --connect, once per stream--> the simulated qube's socket

The host end runs as the simulated qube's Unix user, so the sim daemon's
SO_PEERCRED check identifies every call from the guest as that qube.

Frame: stream id u32, kind u8, payload length u32 (little-endian), payload.
  OPEN    guest -> host only; ids strictly increase, never reused; no payload.
  DATA    up to MAX_PAYLOAD bytes, within the sender's credit.
  EOF     no more DATA in this direction (half-close: shutdown(SHUT_WR)).
  CLOSE   abort the stream (connection refused, reset, too many streams).
  CREDIT  4-byte count: the receiver delivered that many bytes; the sender may
          send them again. Each direction starts with WINDOW bytes of credit,
          so buffering is bounded per stream and the port is never blocked
          by one slow stream.
A stream ends when both directions saw EOF, or on CLOSE. The guest is an
untrusted qube: any frame that breaks these rules ends the whole session
(MuxProtocolError); frames for a stream that already ended are dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import os
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

# Where a guest's qrexec-client-vm connects: the guest end listens there.
QREXEC_SOCKET_ENV = "QSF_SIM_QREXEC_SOCKET"
DEFAULT_GUEST_SOCKET = "/run/qsf-sim/qrexec.sock"

HEADER = struct.Struct("<IBI")
CREDIT = struct.Struct("<I")
MAX_PAYLOAD = 64 * 1024
WINDOW = 256 * 1024
MAX_STREAMS = 64
MAX_STREAM_ID = 0xFFFFFFFF
CONNECT_TIMEOUT = 10.0

# Host side: connect a new stream's protocol (from the factory) to the target.
Connector = Callable[[Callable[[], asyncio.Protocol]], Awaitable[None]]


class Kind(enum.IntEnum):
    OPEN = 1
    DATA = 2
    EOF = 3
    CLOSE = 4
    CREDIT = 5


_KINDS = frozenset(int(kind) for kind in Kind)


class MuxProtocolError(Exception):
    """The peer broke the framing rules: the session ends."""


class _Local(asyncio.Protocol):
    """The local side of one stream (a program's connection, or the target's)."""

    def __init__(self, mux: Mux, stream: _Stream | None) -> None:
        self.mux = mux
        self.stream = stream
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # Told of every byte still buffered: that is what credits the peer.
        transport.set_write_buffer_limits(high=0)
        if self.stream is None:       # guest side: a new caller
            self.stream = self.mux._open(self)
            if self.stream is None:
                transport.close()
        else:                         # host side: the target answered
            self.mux._connected(self.stream, self)

    def data_received(self, data: bytes) -> None:
        if self.stream is not None:
            self.mux._send_data(self.stream, data)

    def eof_received(self) -> bool:
        if self.stream is not None:
            self.mux._local_eof(self.stream)
        return True                   # keep the other direction open

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        if self.stream is not None:
            self.mux._credit(self.stream)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.mux._local_lost(self.stream)


class _Stream:
    """One relayed connection: bookkeeping for both directions."""

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.local: _Local | None = None
        self.credit = WINDOW           # bytes we may still send
        self.pending = bytearray()     # read locally, waiting for credit
        self.local_eof = False         # local EOF seen (EOF frame sent once pending is out)
        self.sent_eof = False
        self.received = 0              # DATA bytes received, not yet credited back
        self.early: list[bytes | None] = []  # inbound before the target connected
        self.got_eof = False
        self.connecting: asyncio.Task[None] | None = None


class Mux(asyncio.Protocol):
    """One session over a port; `initiator` is the guest end (it opens streams).

    The port is this protocol's transport (or `port_writer` when the port's
    reading and writing ends are separate, as for a character device).
    `done` completes when the port closes, with MuxProtocolError on a bad frame.
    """

    def __init__(self, *, initiator: bool, connect: Connector | None = None,
                 port_writer: asyncio.WriteTransport | None = None) -> None:
        if initiator == (connect is not None):
            raise ValueError("the initiator opens streams; the other end needs `connect`")
        self._initiator = initiator
        self._connect = connect
        self._port: asyncio.WriteTransport | None = port_writer
        self._reader: asyncio.BaseTransport | None = None
        self._buffer = bytearray()
        self._streams: dict[int, _Stream] = {}
        self._last_id = 0              # highest id opened so far
        self._closed = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- the port ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._reader = transport
        if self._port is None:
            assert isinstance(transport, asyncio.WriteTransport)
            self._port = transport

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._buffer += data
        try:
            while len(self._buffer) >= HEADER.size:
                stream_id, kind, length = HEADER.unpack_from(self._buffer)
                if length > MAX_PAYLOAD:
                    raise MuxProtocolError(f"frame of {length} bytes > {MAX_PAYLOAD}")
                end = HEADER.size + length
                if len(self._buffer) < end:
                    return
                payload = bytes(self._buffer[HEADER.size:end])
                del self._buffer[:end]
                self._dispatch(stream_id, kind, payload)
        except MuxProtocolError as error:
            self._shutdown(error)

    def eof_received(self) -> bool:
        self._shutdown(MuxProtocolError("the port closed inside a frame")
                       if self._buffer else None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown(None)

    def pause_writing(self) -> None:
        # The peer does not read what we send (a CLOSE per refused OPEN, CREDIT...):
        # stop reading it too, so that what we buffer for it stays bounded.
        if isinstance(self._reader, asyncio.ReadTransport):
            self._reader.pause_reading()

    def resume_writing(self) -> None:
        if isinstance(self._reader, asyncio.ReadTransport) and not self._closed:
            self._reader.resume_reading()

    def _shutdown(self, error: MuxProtocolError | None) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams.values()):
            self._finish(stream)
        for transport in (self._reader, self._port):
            if transport is not None:
                transport.close()
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)

    def _write(self, stream_id: int, kind: Kind,
               payload: bytes | bytearray | memoryview = b"") -> None:
        if not self._closed and self._port is not None:
            self._port.write(HEADER.pack(stream_id, kind, len(payload)) + bytes(payload))

    # --- frames from the peer ----------------------------------------------

    def _dispatch(self, stream_id: int, kind: int, payload: bytes) -> None:
        if kind == Kind.OPEN:
            self._on_open(stream_id, payload)
            return
        if kind not in _KINDS:
            raise MuxProtocolError(f"unknown frame kind {kind}")
        stream = self._streams.get(stream_id)
        if stream is None:
            if 0 < stream_id <= self._last_id:
                return  # the stream ended on our side; the peer has not seen it yet
            raise MuxProtocolError(f"frame for stream {stream_id}, which was never opened")
        if kind == Kind.DATA:
            if stream.got_eof:
                raise MuxProtocolError(f"DATA after EOF on stream {stream_id}")
            if stream.received + len(payload) > WINDOW:
                raise MuxProtocolError(f"stream {stream_id} overran its window")
            stream.received += len(payload)
            self._deliver(stream, payload)
        elif kind == Kind.EOF:
            if stream.got_eof or payload:
                raise MuxProtocolError(f"bad EOF on stream {stream_id}")
            stream.got_eof = True
            self._deliver(stream, None)
        elif kind == Kind.CLOSE:
            self._finish(stream)
        elif kind == Kind.CREDIT:
            if len(payload) != CREDIT.size:
                raise MuxProtocolError(f"CREDIT with a {len(payload)}-byte payload")
            (count,) = CREDIT.unpack(payload)
            if stream.credit + count > WINDOW:
                raise MuxProtocolError(f"stream {stream_id} credited beyond its window")
            stream.credit += count
            self._flush(stream)

    def _on_open(self, stream_id: int, payload: bytes) -> None:
        if self._initiator:
            raise MuxProtocolError("OPEN sent to the initiator")
        if payload or stream_id <= self._last_id:
            raise MuxProtocolError(f"bad OPEN of stream {stream_id}")
        self._last_id = stream_id
        if len(self._streams) >= MAX_STREAMS:
            self._write(stream_id, Kind.CLOSE)
            return
        stream = _Stream(stream_id)
        self._streams[stream_id] = stream
        stream.connecting = asyncio.ensure_future(self._dial(stream))

    async def _dial(self, stream: _Stream) -> None:
        """Host side: connect the new stream to the target."""
        assert self._connect is not None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._connect(lambda: _Local(self, stream))
        except (OSError, TimeoutError):
            self._abort(stream)

    # --- local connections -------------------------------------------------

    def local_protocol(self) -> asyncio.Protocol:
        """Guest side: the protocol for a new local caller, carried as a new stream."""
        return _Local(self, None)

    def _open(self, local: _Local) -> _Stream | None:
        if not self._initiator:
            raise RuntimeError("only the initiator opens streams")
        if self._closed or self._last_id == MAX_STREAM_ID:
            return None
        self._last_id += 1
        stream = _Stream(self._last_id)
        stream.local = local
        self._streams[stream.id] = stream
        self._write(stream.id, Kind.OPEN)
        return stream

    def _connected(self, stream: _Stream, local: _Local) -> None:
        if stream.id not in self._streams:  # closed by the peer while connecting
            assert local.transport is not None
            local.transport.close()
            return
        stream.local = local
        for item in stream.early:
            self._deliver(stream, item)
        stream.early.clear()

    def _deliver(self, stream: _Stream, item: bytes | None) -> None:
        """Peer -> local socket. Crediting waits until the socket took the bytes."""
        local = stream.local
        if local is None or local.transport is None:
            stream.early.append(item)
            return
        transport = local.transport
        if item is None:
            if transport.can_write_eof():
                transport.write_eof()
            self._maybe_done(stream)
            return
        transport.write(item)
        self._credit(stream)

    def _credit(self, stream: _Stream) -> None:
        """Give back credit for what the local socket took, a quarter window at a time.

        The peer still holds three quarters of its window meanwhile, and once it
        runs dry everything it sent has arrived: when the socket has taken it all
        (resume_writing), the credit goes back.
        """
        local = stream.local
        if local is None or local.transport is None or stream.id not in self._streams:
            return
        delivered = stream.received - local.transport.get_write_buffer_size()
        if delivered >= WINDOW // 4:
            stream.received -= delivered
            self._write(stream.id, Kind.CREDIT, CREDIT.pack(delivered))

    def _send_data(self, stream: _Stream, data: bytes) -> None:
        """Local socket -> peer, within credit; the rest waits with reading paused."""
        stream.pending += data
        self._flush(stream)

    def _flush(self, stream: _Stream) -> None:
        while stream.pending and stream.credit > 0:
            count = min(len(stream.pending), stream.credit, MAX_PAYLOAD)
            self._write(stream.id, Kind.DATA, stream.pending[:count])
            del stream.pending[:count]
            stream.credit -= count
        local = stream.local
        if local is None or local.transport is None:
            return
        if stream.pending:
            local.transport.pause_reading()
        elif stream.local_eof:
            if not stream.sent_eof:
                stream.sent_eof = True
                self._write(stream.id, Kind.EOF)
                self._maybe_done(stream)
        elif not local.transport.is_reading() and stream.id in self._streams:
            local.transport.resume_reading()

    def _local_eof(self, stream: _Stream) -> None:
        stream.local_eof = True
        self._flush(stream)

    def _maybe_done(self, stream: _Stream) -> None:
        """Both directions ended: forget the stream and close its socket."""
        if stream.sent_eof and stream.got_eof:
            self._finish(stream)

    def _local_lost(self, stream: _Stream) -> None:
        if stream.id in self._streams:
            self._abort(stream)

    def _abort(self, stream: _Stream) -> None:
        if stream.id in self._streams:
            self._write(stream.id, Kind.CLOSE)
        self._finish(stream)

    def _finish(self, stream: _Stream) -> None:
        """Forget the stream and close its local socket."""
        if self._streams.pop(stream.id, None) is None:
            return
        if stream.connecting is not None and not stream.connecting.done():
            stream.connecting.cancel()
        if stream.local is not None and stream.local.transport is not None:
            stream.local.stream = None
            stream.local.transport.close()

    @property
    def open_streams(self) -> int:
        return len(self._streams)


# --- the two ends as programs -------------------------------------------------


def connect_port(port_socket: str, user: tuple[int, int] | None = None) -> socket.socket:
    """Connect to QEMU's chardev socket, then become `user` (uid, gid) if given.

    The socket usually belongs to whoever runs QEMU; every stream is then made
    as the simulated qube's user, which the sim daemon checks with SO_PEERCRED.
    """
    port = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    port.connect(port_socket)
    if user is not None:
        uid, gid = user
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    return port


async def run_host(port: socket.socket, target: str) -> None:
    """Host end: serve the guest's streams arriving on QEMU's chardev socket."""
    loop = asyncio.get_running_loop()

    async def connect(factory: Callable[[], asyncio.Protocol]) -> None:
        await loop.create_unix_connection(factory, target)

    mux = Mux(initiator=False, connect=connect)
    await loop.create_unix_connection(lambda: mux, sock=port)
    await mux.done


def find_port(name: str) -> str:
    """The /dev node of the virtio-serial port called `name` (no udev needed)."""
    for entry in Path("/sys/class/virtio-ports").glob("*"):
        with contextlib.suppress(OSError):
            if (entry / "name").read_text().strip() == name:
                return f"/dev/{entry.name}"
    raise FileNotFoundError(f"no virtio-serial port named {name!r}")


async def _attach_port(device: str) -> Mux:
    """A guest-side session on the port's device node (separate read/write ends)."""
    loop = asyncio.get_running_loop()
    fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    write_file = os.fdopen(os.dup(fd), "wb", buffering=0)
    read_file = os.fdopen(fd, "rb", buffering=0)
    writer, _ = await loop.connect_write_pipe(asyncio.Protocol, write_file)
    mux = Mux(initiator=True, port_writer=writer)
    await loop.connect_read_pipe(lambda: mux, read_file)
    return mux


async def run_guest(device: str, listen: str) -> None:
    """Guest end: carry every connection to `listen` as a stream over the port.

    A port reads EOF while no host end is connected: the session then ends,
    its streams are dropped, and the port is reopened shortly after.
    """
    loop = asyncio.get_running_loop()
    current: list[Mux] = []

    def new_caller() -> asyncio.Protocol:
        if current:
            return current[0].local_protocol()
        return _Refuse()

    Path(listen).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(listen)
    server = await loop.create_unix_server(new_caller, path=listen)
    os.chmod(listen, 0o666)  # as a qube's qrexec socket: every local user may call
    async with server:
        while True:
            mux = await _attach_port(device)
            current[:] = [mux]
            try:
                await mux.done
            except MuxProtocolError as error:
                print(f"qsf-mux: {error}", file=sys.stderr)
            current.clear()
            await asyncio.sleep(0.5)


class _Refuse(asyncio.Protocol):
    """A caller while no session runs: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


parser = argparse.ArgumentParser(
    prog="python -m qsf_sim.mux",
    description="Carry many qrexec calls of a QEMU guest over one virtio-serial port.")
_ends = parser.add_subparsers(dest="end", required=True)
_host = _ends.add_parser("host", help="host end: QEMU chardev socket -> the qube's socket")
_host.add_argument("--port-socket", required=True, help="QEMU's chardev socket of the port")
_host.add_argument("--target", required=True,
                   help="Unix socket to connect to for every stream (the sim qube's socket)")
_host.add_argument("--user", metavar="UID:GID",
                   help="after connecting to the port, run as this user (the qube's)")
_guest = _ends.add_parser("guest", help="guest end: local Unix socket -> the port")
_where = _guest.add_mutually_exclusive_group(required=True)
_where.add_argument("--port-device", help="the port's device node")
_where.add_argument("--port-name", help="the port's name (found under /sys/class/virtio-ports)")
_guest.add_argument("--listen", default=os.environ.get(QREXEC_SOCKET_ENV, DEFAULT_GUEST_SOCKET),
                    help=f"Unix socket to listen on (default: ${QREXEC_SOCKET_ENV} or "
                         f"{DEFAULT_GUEST_SOCKET})")


def main(args: list[str] | None = None) -> int:
    options = parser.parse_args(args)
    try:
        if options.end == "host":
            user = None
            if options.user:
                uid, _, gid = options.user.partition(":")
                if not (uid.isdigit() and gid.isdigit()):
                    parser.error("--user takes UID:GID (numbers)")
                user = (int(uid), int(gid))
            port = connect_port(options.port_socket, user)
            asyncio.run(run_host(port, options.target))
        else:
            device = options.port_device or find_port(options.port_name)
            asyncio.run(run_guest(device, options.listen))
    except MuxProtocolError as error:
        print(f"qsf-mux: the guest broke the protocol: {error}", file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as error:
        print(f"qsf-mux: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
