"""qsf_sim.mux alone: two ends joined by a socketpair, targets on Unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsf_sim import mux
from qsf_sim.mux import CREDIT, HEADER, MAX_PAYLOAD, MAX_STREAMS, WINDOW, Kind, Mux

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def frame(stream_id: int, kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(stream_id, kind, len(payload)) + payload


async def stream_pair() -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter],
                                 tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    left, right = socket.socketpair()
    return (await asyncio.open_unix_connection(sock=left),
            await asyncio.open_unix_connection(sock=right))


class Pair:
    """A guest end and a host end over a socketpair 'port', the host's target a server."""

    def __init__(self, target: str) -> None:
        self.target = target

    async def __aenter__(self) -> Pair:
        loop = asyncio.get_running_loop()
        guest_port, host_port = socket.socketpair()

        async def connect(factory: Callable[[], asyncio.Protocol]) -> None:
            await loop.create_unix_connection(factory, self.target)

        self.guest = Mux(initiator=True)
        self.host = Mux(initiator=False, connect=connect)
        await loop.create_unix_connection(lambda: self.guest, sock=guest_port)
        self.host_port, _ = await loop.create_unix_connection(lambda: self.host, sock=host_port)
        return self

    async def call(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A local connection carried by the guest end, as a program in the guest sees it."""
        mine, theirs = socket.socketpair()
        await asyncio.get_running_loop().connect_accepted_socket(self.guest.local_protocol,
                                                                 theirs)
        return await asyncio.open_unix_connection(sock=mine)

    async def __aexit__(self, *exc: object) -> None:
        self.host_port.close()
        async with asyncio.timeout(5):
            await asyncio.gather(self.guest.done, self.host.done)


async def serve(path: Path, handler: Handler) -> asyncio.Server:
    return await asyncio.start_unix_server(handler, path=str(path))


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo everything, then half-close when the caller half-closes."""
    while data := await reader.read(50_000):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()
    writer.close()


async def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.01)


def test_mux_relays_concurrent_streams_beyond_the_window(tmp_path: Path) -> None:
    async def body() -> None:
        server = await serve(tmp_path / "target", echo)
        async with server, Pair(str(tmp_path / "target")) as pair:
            async def one_call(size: int) -> None:
                reader, writer = await pair.call()
                payload = os.urandom(size)

                async def send() -> None:
                    for start in range(0, size, 70_000):
                        writer.write(payload[start:start + 70_000])
                        await writer.drain()
                    writer.write_eof()

                sender = asyncio.create_task(send())
                received = await reader.read(-1)  # until the echo's half-close
                await sender
                assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
                writer.close()

            # Each echo exceeds the per-stream window many times over.
            await asyncio.gather(*(one_call(size) for size in (0, 1, 3 * WINDOW, 4 << 20)))
            await eventually(lambda: pair.guest.open_streams == pair.host.open_streams == 0)
    asyncio.run(body())


def test_mux_half_close_keeps_the_other_direction_open(tmp_path: Path) -> None:
    async def answer_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read(-1)  # the caller half-closed
        writer.write(b"got " + str(len(request)).encode())
        await writer.drain()
        writer.close()

    async def body() -> None:
        server = await serve(tmp_path / "target", answer_after_eof)
        async with server, Pair(str(tmp_path / "target")) as pair:
            reader, writer = await pair.call()
            writer.write(b"x" * 100_000)
            writer.write_eof()
            assert await reader.read(-1) == b"got 100000"
            writer.close()
    asyncio.run(body())


def test_mux_refused_target_closes_the_local_connection(tmp_path: Path) -> None:
    async def body() -> None:
        async with Pair(str(tmp_path / "nobody-listens")) as pair:
            reader, writer = await pair.call()
            async with asyncio.timeout(5):
                assert await reader.read(-1) == b""
            writer.close()
            await eventually(lambda: pair.guest.open_streams == pair.host.open_streams == 0)
    asyncio.run(body())


def test_mux_port_loss_closes_every_stream(tmp_path: Path) -> None:
    async def body() -> None:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(-1)
            writer.close()

        server = await serve(tmp_path / "target", hold)
        async with server, Pair(str(tmp_path / "target")) as pair:
            calls = [await pair.call() for _ in range(3)]
            await eventually(lambda: pair.host.open_streams == 3)
            pair.host_port.close()  # the host end goes away: the port closes
            for reader, writer in calls:
                async with asyncio.timeout(5):
                    assert await reader.read(-1) == b""
                writer.close()
            await eventually(lambda: pair.guest.open_streams == 0)
    asyncio.run(body())


# --- the host end under a hostile guest -------------------------------------------


async def host_reading(data: bytes) -> tuple[BaseException | None, bytes]:
    """Feed raw bytes to a host end whose target never answers; return (error, reply)."""
    loop = asyncio.get_running_loop()
    port, raw = socket.socketpair()
    never = asyncio.Event()

    async def hang(factory: Callable[[], asyncio.Protocol]) -> None:
        await never.wait()

    host = Mux(initiator=False, connect=hang)
    await loop.create_unix_connection(lambda: host, sock=port)
    guest_r, guest_w = await asyncio.open_unix_connection(sock=raw)
    guest_w.write(data)
    guest_w.write_eof()
    error: BaseException | None = None
    try:
        async with asyncio.timeout(10):
            await host.done
    except mux.MuxProtocolError as caught:
        error = caught
    reply = await guest_r.read(-1)
    guest_w.close()
    return error, reply


OPEN_1 = frame(1, Kind.OPEN)


@pytest.mark.parametrize("data", [
    pytest.param(HEADER.pack(1, Kind.OPEN, MAX_PAYLOAD + 1), id="oversized-frame"),
    pytest.param(OPEN_1 + frame(1, 99), id="unknown-kind"),
    pytest.param(frame(7, Kind.DATA, b"x"), id="data-on-unopened-stream"),
    pytest.param(OPEN_1 + OPEN_1, id="reused-stream-id"),
    pytest.param(frame(0, Kind.OPEN), id="stream-id-zero"),
    pytest.param(frame(1, Kind.OPEN, b"x"), id="open-with-payload"),
    pytest.param(OPEN_1 + frame(1, Kind.EOF) + frame(1, Kind.EOF), id="double-eof"),
    pytest.param(OPEN_1 + frame(1, Kind.EOF) + frame(1, Kind.DATA, b"x"), id="data-after-eof"),
    pytest.param(OPEN_1 + frame(1, Kind.CREDIT, CREDIT.pack(1)), id="credit-beyond-window"),
    pytest.param(OPEN_1 + frame(1, Kind.CREDIT, b"\0"), id="short-credit"),
    pytest.param(OPEN_1 + frame(1, Kind.DATA, b"x" * MAX_PAYLOAD) * (WINDOW // MAX_PAYLOAD + 1),
                 id="window-overrun"),
    pytest.param(OPEN_1 + HEADER.pack(1, Kind.DATA, 10) + b"abc", id="truncated-frame"),
    pytest.param(OPEN_1[:5], id="truncated-header"),
])
def test_mux_host_end_rejects_a_hostile_guest(data: bytes) -> None:
    error, _ = asyncio.run(host_reading(data))
    assert isinstance(error, mux.MuxProtocolError)


def test_mux_host_end_accepts_a_full_window_and_clean_eof() -> None:
    data = OPEN_1 + frame(1, Kind.DATA, b"x" * MAX_PAYLOAD) * (WINDOW // MAX_PAYLOAD)
    error, _ = asyncio.run(host_reading(data + frame(1, Kind.EOF) + frame(1, Kind.CLOSE)))
    assert error is None


def test_mux_host_end_refuses_streams_beyond_the_limit() -> None:
    opens = b"".join(frame(n, Kind.OPEN) for n in range(1, MAX_STREAMS + 3))
    error, reply = asyncio.run(host_reading(opens))
    assert error is None
    closes = [HEADER.unpack_from(reply, offset) for offset in range(0, len(reply), HEADER.size)]
    assert closes == [(n, Kind.CLOSE, 0) for n in (MAX_STREAMS + 1, MAX_STREAMS + 2)]


def test_mux_host_end_stops_reading_a_guest_that_does_not_read() -> None:
    async def body() -> int:
        loop = asyncio.get_running_loop()
        port, raw = socket.socketpair()

        async def refuse(factory: Callable[[], asyncio.Protocol]) -> None:
            raise ConnectionRefusedError

        host = Mux(initiator=False, connect=refuse)
        transport, _ = await loop.create_unix_connection(lambda: host, sock=port)
        _, guest_w = await asyncio.open_unix_connection(sock=raw)
        # Every OPEN is refused with a CLOSE the guest never reads.
        opens = (frame(n, Kind.OPEN) for n in range(1, 1_000_000))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                for chunk in iter(lambda: b"".join(itertools.islice(opens, 1000)), b""):
                    guest_w.write(chunk)
                    await guest_w.drain()
        assert not host.done.done()
        buffered = transport.get_write_buffer_size()
        transport.close()
        guest_w.close()
        return buffered

    # The host stopped reading once its replies piled up (64 KiB high-water mark).
    assert asyncio.run(body()) < 256 * 1024


def test_mux_frames_for_an_ended_stream_are_dropped() -> None:
    data = OPEN_1 + frame(1, Kind.CLOSE) + frame(1, Kind.DATA, b"late") + frame(1, Kind.EOF)
    error, _ = asyncio.run(host_reading(data))
    assert error is None


@given(st.binary(max_size=2000))
def test_mux_host_end_survives_any_bytes(data: bytes) -> None:
    # The invariant: a clean end or MuxProtocolError, never another exception.
    asyncio.run(host_reading(data))


@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(list(Kind)),
                          st.binary(max_size=8)), max_size=30))
def test_mux_host_end_survives_any_frame_sequence(
        frames: list[tuple[int, Kind, bytes]]) -> None:
    asyncio.run(host_reading(b"".join(frame(*f) for f in frames)))
