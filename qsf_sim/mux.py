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

Connector = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class Kind(enum.IntEnum):
    OPEN = 1
    DATA = 2
    EOF = 3
    CLOSE = 4
    CREDIT = 5


_KINDS = frozenset(int(kind) for kind in Kind)


class MuxProtocolError(Exception):
    """The peer broke the framing rules: the session ends."""


class _Stream:
    """One relayed connection: a local socket and its two directions."""

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.writer: asyncio.StreamWriter | None = None
        self.credit = WINDOW                    # bytes we may still send
        self.credit_changed = asyncio.Event()
        self.inbound: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.inbound_bytes = 0                  # received, not yet delivered
        self.got_eof = False
        self.tasks: list[asyncio.Task[None]] = []


class Mux:
    """One session over a port; `initiator` is the guest end (it opens streams)."""

    def __init__(self, port_reader: asyncio.StreamReader, port_writer: asyncio.StreamWriter,
                 *, initiator: bool, connect: Connector | None = None) -> None:
        if initiator == (connect is not None):
            raise ValueError("the initiator opens streams; the other end needs `connect`")
        self._reader = port_reader
        self._writer = port_writer
        self._initiator = initiator
        self._connect = connect
        self._streams: dict[int, _Stream] = {}
        self._last_id = 0          # highest id opened so far (by either rule)
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()

    def _spawn(self, coroutine: Awaitable[None]) -> asyncio.Task[None]:
        """Run a task that the session keeps a reference to until it ends."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- sending -----------------------------------------------------------

    async def _send(self, stream_id: int, kind: Kind, payload: bytes | memoryview = b"") -> None:
        async with self._send_lock:
            if self._closed:
                raise ConnectionError("the mux session is closed")
            self._writer.write(HEADER.pack(stream_id, kind, len(payload)) + bytes(payload))
            await self._writer.drain()

    # --- the session -------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the port closes; raise MuxProtocolError on a bad frame."""
        try:
            while True:
                try:
                    header = await self._reader.readexactly(HEADER.size)
                except asyncio.IncompleteReadError as error:
                    if error.partial:
                        raise MuxProtocolError("the port closed inside a frame header") from None
                    return
                stream_id, kind, length = HEADER.unpack(header)
                if length > MAX_PAYLOAD:
                    raise MuxProtocolError(f"frame of {length} bytes > {MAX_PAYLOAD}")
                try:
                    payload = await self._reader.readexactly(length)
                except asyncio.IncompleteReadError:
                    raise MuxProtocolError("the port closed inside a frame") from None
                self._dispatch(stream_id, kind, payload)
        finally:
            self._closed = True
            for stream in list(self._streams.values()):
                self._finish(stream)
            self._writer.close()

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
            if stream.inbound_bytes + len(payload) > WINDOW:
                raise MuxProtocolError(f"stream {stream_id} overran its window")
            stream.inbound_bytes += len(payload)
            stream.inbound.put_nowait(payload)
        elif kind == Kind.EOF:
            if stream.got_eof or payload:
                raise MuxProtocolError(f"bad EOF on stream {stream_id}")
            stream.got_eof = True
            stream.inbound.put_nowait(None)
        elif kind == Kind.CLOSE:
            self._finish(stream)
        elif kind == Kind.CREDIT:
            if len(payload) != CREDIT.size:
                raise MuxProtocolError(f"CREDIT with a {len(payload)}-byte payload")
            (count,) = CREDIT.unpack(payload)
            if stream.credit + count > WINDOW:
                raise MuxProtocolError(f"stream {stream_id} credited beyond its window")
            stream.credit += count
            stream.credit_changed.set()

    def _on_open(self, stream_id: int, payload: bytes) -> None:
        if self._initiator:
            raise MuxProtocolError("OPEN sent to the initiator")
        if payload or stream_id <= self._last_id:
            raise MuxProtocolError(f"bad OPEN of stream {stream_id}")
        self._last_id = stream_id
        if len(self._streams) >= MAX_STREAMS:
            self._spawn_close(stream_id)
            return
        stream = _Stream(stream_id)
        self._streams[stream_id] = stream
        stream.tasks.append(self._spawn(self._accept(stream)))

    def _spawn_close(self, stream_id: int) -> None:
        async def send_close() -> None:
            with contextlib.suppress(ConnectionError):
                await self._send(stream_id, Kind.CLOSE)
        self._spawn(send_close())

    # --- streams -----------------------------------------------------------

    async def _accept(self, stream: _Stream) -> None:
        """Host side: connect the new stream to the target and relay."""
        assert self._connect is not None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await self._connect()
        except (OSError, TimeoutError):
            self._abort(stream)
            return
        self._attach(stream, reader, writer)

    async def open_stream(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        """Guest side: carry one local connection as a new stream."""
        if not self._initiator:
            raise RuntimeError("only the initiator opens streams")
        if self._closed or self._last_id == MAX_STREAM_ID:
            writer.close()
            return
        self._last_id += 1
        stream = _Stream(self._last_id)
        self._streams[stream.id] = stream
        try:
            await self._send(stream.id, Kind.OPEN)
        except ConnectionError:
            self._finish(stream)
            writer.close()
            return
        self._attach(stream, reader, writer)

    def _attach(self, stream: _Stream, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
        if stream.id not in self._streams:  # closed by the peer while connecting
            writer.close()
            return
        stream.writer = writer
        outbound = self._spawn(self._pump_out(stream, reader))
        inbound = self._spawn(self._pump_in(stream))
        stream.tasks += [outbound, inbound]
        self._spawn(self._supervise(stream, outbound, inbound))

    async def _supervise(self, stream: _Stream, *pumps: asyncio.Task[None]) -> None:
        """End the stream when both directions are done, or abort it on an error."""
        pending = set(pumps)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled():
                    return  # _finish cancelled us
                if task.exception() is not None:
                    self._abort(stream)
                    return
        self._finish(stream)

    async def _pump_out(self, stream: _Stream, reader: asyncio.StreamReader) -> None:
        """Local socket -> port, within the peer's credit."""
        while True:
            data = await reader.read(MAX_PAYLOAD)
            if not data:
                await self._send(stream.id, Kind.EOF)
                return
            view = memoryview(data)
            while view:
                while stream.credit == 0:
                    stream.credit_changed.clear()
                    await stream.credit_changed.wait()
                count = min(len(view), stream.credit)
                stream.credit -= count
                await self._send(stream.id, Kind.DATA, view[:count])
                view = view[count:]

    async def _pump_in(self, stream: _Stream) -> None:
        """Port -> local socket, crediting the peer as bytes are delivered."""
        writer = stream.writer
        assert writer is not None
        while True:
            item = await stream.inbound.get()
            if item is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(item)
            await writer.drain()
            stream.inbound_bytes -= len(item)
            await self._send(stream.id, Kind.CREDIT, CREDIT.pack(len(item)))

    def _abort(self, stream: _Stream) -> None:
        if stream.id in self._streams and not self._closed:
            self._spawn_close(stream.id)
        self._finish(stream)

    def _finish(self, stream: _Stream) -> None:
        """Forget the stream, stop its tasks and close its local socket."""
        if self._streams.pop(stream.id, None) is None:
            return
        current = asyncio.current_task()
        for task in stream.tasks:
            if task is not current:
                task.cancel()
        if stream.writer is not None:
            stream.writer.close()

    @property
    def open_streams(self) -> int:
        return len(self._streams)


# --- the two ends as programs -------------------------------------------------


async def run_host(port_socket: str, target: str) -> None:
    """Host end: serve the guest's streams arriving on QEMU's chardev socket."""
    reader, writer = await asyncio.open_unix_connection(port_socket)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(target)

    await Mux(reader, writer, initiator=False, connect=connect).run()


def find_port(name: str) -> str:
    """The /dev node of the virtio-serial port called `name` (no udev needed)."""
    for entry in Path("/sys/class/virtio-ports").glob("*"):
        with contextlib.suppress(OSError):
            if (entry / "name").read_text().strip() == name:
                return f"/dev/{entry.name}"
    raise FileNotFoundError(f"no virtio-serial port named {name!r}")


async def _open_port(device: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    read_file = os.fdopen(fd, "rb", buffering=0)
    write_file = os.fdopen(os.dup(fd), "wb", buffering=0)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), read_file)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, write_file)
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


async def run_guest(device: str, listen: str) -> None:
    """Guest end: carry every connection to `listen` as a stream over the port.

    A port reads EOF while no host end is connected: the session then ends,
    its streams are dropped, and the port is reopened shortly after.
    """
    current: list[Mux] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if current:
            await current[0].open_stream(reader, writer)
        else:
            writer.close()

    Path(listen).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(listen)
    server = await asyncio.start_unix_server(on_connect, path=listen)
    os.chmod(listen, 0o666)  # as a qube's qrexec socket: every local user may call
    async with server:
        while True:
            reader, writer = await _open_port(device)
            mux = Mux(reader, writer, initiator=True)
            current[:] = [mux]
            try:
                await mux.run()
            except MuxProtocolError as error:
                print(f"qsf-mux: {error}", file=sys.stderr)
            current.clear()
            await asyncio.sleep(0.5)


parser = argparse.ArgumentParser(
    prog="python -m qsf_sim.mux",
    description="Carry many qrexec calls of a QEMU guest over one virtio-serial port.")
_ends = parser.add_subparsers(dest="end", required=True)
_host = _ends.add_parser("host", help="host end: QEMU chardev socket -> the qube's socket")
_host.add_argument("--port-socket", required=True, help="QEMU's chardev socket of the port")
_host.add_argument("--target", required=True,
                   help="Unix socket to connect to for every stream (the sim qube's socket)")
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
            asyncio.run(run_host(options.port_socket, options.target))
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
