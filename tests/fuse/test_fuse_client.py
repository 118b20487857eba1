"""The 9P client against a scripted server on an in-memory stream.

The server side decodes the client's requests with the shared codec and
answers whatever the test says, including replies that are wrong on purpose.
"""

from __future__ import annotations

import errno
import struct

import pytest
import trio
import trio.testing

from qsf_fuse.client import FidPool, P9Client, P9Error
from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_p9.codec import EOF, NEED_DATA, Decoder, encode

QID = m.Qid(0, 1, 42)


def getattr_reply(size: int) -> m.Rgetattr:
    return m.Rgetattr(c.GETATTR_BASIC, QID, 0o100644, 0, 0, 1, 0, size, 4096, 0,
                      0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


class FakeServer:
    """The server end: receives requests, sends what the test asks."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = Decoder(replies=False)
        self.received: list[tuple[int, m.Message]] = []

    async def request(self) -> tuple[int, m.Message]:
        while True:
            item = self.decoder.next_message()
            if item is EOF:
                raise EOFError
            if item is not NEED_DATA:
                assert isinstance(item, tuple)
                self.received.append(item)
                return item
            data = await self.stream.receive_some(65536)
            self.decoder.receive_data(data)

    async def reply(self, tag: int, message: m.Message) -> None:
        await self.stream.send_all(encode(tag, message))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def handshake(self, msize: int = 65536) -> None:
        tag, request = await self.request()
        assert isinstance(request, m.Tversion) and tag == c.NOTAG
        await self.reply(tag, m.Rversion(msize, c.VERSION_9P2000L))


async def connect(nursery: trio.Nursery, timeout: float = 5.0) -> tuple[P9Client, FakeServer]:
    client_end, server_end = trio.testing.memory_stream_pair()
    client = P9Client(client_end, client_end, timeout=timeout)
    await client.start(nursery)
    server = FakeServer(server_end)
    async with trio.open_nursery() as inner:
        inner.start_soon(server.handshake)
        assert await client.negotiate(c.MAX_MSIZE) == 65536
    return client, server


async def call_result(client: P9Client, request: m.Message, reply: type[m.Message]) -> object:
    try:
        return await client.call(request, reply)
    except P9Error as error:
        return error.errno


async def test_version_checks() -> None:
    for answer, expected in (
        (m.Rversion(2 * c.MAX_MSIZE, c.VERSION_9P2000L), errno.EIO),
        (m.Rversion(1024, c.VERSION_9P2000L), errno.EIO),
        (m.Rversion(8192, b"9P2000.u"), errno.EPROTONOSUPPORT),
    ):
        async with trio.open_nursery() as nursery:
            client_end, server_end = trio.testing.memory_stream_pair()
            client = P9Client(client_end, client_end)
            await client.start(nursery)
            server = FakeServer(server_end)

            async def answer_version(server: FakeServer = server,
                                     answer: m.Message = answer) -> None:
                tag, _ = await server.request()
                await server.reply(tag, answer)

            nursery.start_soon(answer_version)
            with pytest.raises(P9Error) as error:
                await client.negotiate(c.MAX_MSIZE)
            assert error.value.errno == expected
            nursery.cancel_scope.cancel()


async def test_many_requests_in_flight_answered_out_of_order() -> None:
    async with trio.open_nursery() as nursery:
        client, server = await connect(nursery)
        results: dict[int, object] = {}

        async def one(fid: int) -> None:
            reply = await client.call(m.Tgetattr(fid, c.GETATTR_BASIC), m.Rgetattr)
            results[fid] = reply.size

        async with trio.open_nursery() as calls:
            for fid in range(100):
                calls.start_soon(one, fid)
            requests = [await server.request() for _ in range(100)]
            assert len({tag for tag, _ in requests}) == 100
            for tag, request in reversed(requests):
                assert isinstance(request, m.Tgetattr)
                await server.reply(tag, getattr_reply(1000 + request.fid))
        assert results == {fid: 1000 + fid for fid in range(100)}
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("request_message", "reply_type", "bad_reply"),
    [
        (m.Tread(1, 0, 10), m.Rread, m.Rread(b"x" * 11)),  # more than asked
        (m.Twalk(1, 2, (b"a",)), m.Rwalk, m.Rwalk((QID, QID))),  # more qids than names
        (m.Twalk(1, 2, (b"a",)), m.Rwalk, m.Rwalk(())),  # no qid: must be Rlerror
        (m.Tgetattr(1, c.GETATTR_BASIC), m.Rgetattr, m.Rclunk()),  # wrong type
        (m.Tclunk(1), m.Rclunk, m.Rlerror(0)),  # "error" 0
        (m.Tclunk(1), m.Rclunk, m.Rlerror(5000)),  # not an errno
        (m.Twrite(1, 0, b"abc"), m.Rwrite, m.Rwrite(4)),  # wrote more than sent
        (m.Treaddir(1, 0, 30), m.Rreaddir,
         m.Rreaddir((m.Dirent(QID, 1, c.DT_REG, b"long-name-here"),))),  # over count
        (m.Treadlink(1), m.Rreadlink, m.Rreadlink(b"a\0b")),
        (m.Txattrwalk(1, 2, b"user.x"), m.Rxattrwalk, m.Rxattrwalk(1 << 40)),
    ],
)
async def test_a_bad_reply_fails_that_call_only(
    request_message: m.Message, reply_type: type[m.Message], bad_reply: m.Message
) -> None:
    async with trio.open_nursery() as nursery:
        client, server = await connect(nursery)

        async def serve() -> None:
            tag, _ = await server.request()
            await server.reply(tag, bad_reply)
            tag, _ = await server.request()
            await server.reply(tag, m.Rclunk())

        nursery.start_soon(serve)
        result = await call_result(client, request_message, reply_type)
        assert result in (errno.EIO, errno.E2BIG)
        # The connection goes on.
        assert isinstance(await client.call(m.Tclunk(7), m.Rclunk), m.Rclunk)
        assert not client.dead
        nursery.cancel_scope.cancel()


async def test_server_errno_passes_through() -> None:
    async with trio.open_nursery() as nursery:
        client, server = await connect(nursery)

        async def serve() -> None:
            tag, _ = await server.request()
            await server.reply(tag, m.Rlerror(errno.ENOENT))

        nursery.start_soon(serve)
        assert await call_result(client, m.Twalk(0, 1, (b"x",)), m.Rwalk) == errno.ENOENT
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "poison",
    [
        encode(999, m.Rclunk()),  # a tag nobody asked on
        struct.pack("<IBH", 3, 121, 0),  # size below the header
        struct.pack("<IBH", 10 * 65536, 117, 0),  # beyond the negotiated msize
    ],
    ids=["unknown-tag", "short-frame", "oversized"],
)
async def test_a_broken_stream_fails_everything_at_once(poison: bytes) -> None:
    async with trio.open_nursery() as nursery:
        client, server = await connect(nursery)
        results: list[object] = []

        async def pending() -> None:
            results.append(await call_result(client, m.Tclunk(5), m.Rclunk))

        async with trio.open_nursery() as calls:
            calls.start_soon(pending)
            await server.request()
            await server.send_raw(poison)
        assert results == [errno.EIO]
        assert client.dead
        with trio.fail_after(1):
            assert await call_result(client, m.Tclunk(6), m.Rclunk) == errno.EIO
        nursery.cancel_scope.cancel()


async def test_eof_fails_pending_calls() -> None:
    async with trio.open_nursery() as nursery:
        client, server = await connect(nursery)
        results: list[object] = []

        async def pending() -> None:
            results.append(await call_result(client, m.Tclunk(5), m.Rclunk))

        async with trio.open_nursery() as calls:
            calls.start_soon(pending)
            await server.request()
            await server.stream.aclose()
        assert results == [errno.EIO]
        nursery.cancel_scope.cancel()


async def test_timeout_flushes_and_keeps_the_tag_until_rflush(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        client, server = await connect(nursery, timeout=10)
        assert await call_result(client, m.Tread(1, 0, 10), m.Rread) == errno.ETIMEDOUT
        old_tag, _ = await server.request()
        flush_tag, flush = await server.request()
        assert flush == m.Tflush(old_tag)
        # While the flush is pending, no new request may take the old tag.
        for _ in range(3):
            async with trio.open_nursery() as calls:
                calls.start_soon(call_result, client, m.Tclunk(9), m.Rclunk)
                tag, _ = await server.request()
                assert tag not in (old_tag, flush_tag)
                await server.reply(tag, m.Rclunk())
        # The late reply, then Rflush: both accepted, the connection lives on.
        await server.reply(old_tag, m.Rread(b"late"))
        await server.reply(flush_tag, m.Rflush())
        await trio.sleep(0.1)
        assert not client.dead
        async with trio.open_nursery() as calls:
            calls.start_soon(call_result, client, m.Tclunk(9), m.Rclunk)
            tag, _ = await server.request()
            await server.reply(tag, m.Rclunk())
        # A second reply on the flushed tag now is a protocol violation.
        await server.reply(old_tag, m.Rread(b"again"))
        await trio.sleep(0.1)
        assert client.dead
        nursery.cancel_scope.cancel()


async def test_cancelled_walk_clunks_the_fid_a_late_reply_created(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        client, server = await connect(nursery, timeout=100)
        with trio.move_on_after(1):
            await client.walk(0, [b"name"])
        walk_tag, walk = await server.request()
        assert isinstance(walk, m.Twalk)
        flush_tag, flush = await server.request()
        assert flush == m.Tflush(walk_tag)
        await server.reply(walk_tag, m.Rwalk((QID,)))
        await server.reply(flush_tag, m.Rflush())
        clunk_tag, clunk = await server.request()
        assert clunk == m.Tclunk(walk.newfid)
        await server.reply(clunk_tag, m.Rclunk())
        await trio.sleep(1)
        # The fid number is free again only now.
        assert client.fids.allocate() == walk.newfid
        nursery.cancel_scope.cancel()


async def test_unanswered_flush_declares_the_server_dead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        client, server = await connect(nursery, timeout=5)
        assert await call_result(client, m.Tclunk(1), m.Rclunk) == errno.ETIMEDOUT
        await server.request()  # the Tflush, never answered
        await trio.sleep(6)
        assert client.dead and client.unresponsive
        assert await call_result(client, m.Tclunk(2), m.Rclunk) == errno.EIO
        nursery.cancel_scope.cancel()


async def test_long_walks_are_split() -> None:
    async with trio.open_nursery() as nursery:
        client, server = await connect(nursery)
        names = [b"d%d" % index for index in range(20)]

        async def serve() -> None:
            for chunk in (names[:16], names[16:]):
                tag, request = await server.request()
                assert isinstance(request, m.Twalk) and list(request.wnames) == chunk
                await server.reply(tag, m.Rwalk(tuple(QID for _ in chunk)))

        nursery.start_soon(serve)
        newfid, qid = await client.walk(0, names)
        assert qid == QID
        first, second = server.received[-2][1], server.received[-1][1]
        assert isinstance(first, m.Twalk) and isinstance(second, m.Twalk)
        assert (first.fid, first.newfid) == (0, newfid)
        assert (second.fid, second.newfid) == (newfid, newfid)
        nursery.cancel_scope.cancel()


def test_fid_numbers_are_never_given_out_twice() -> None:
    pool = FidPool()
    first, second = pool.allocate(), pool.allocate()
    pool.release(first)
    pool.release(first)  # a second release is refused, not queued twice
    assert pool.allocate() == first
    assert pool.allocate() not in (first, second)


async def test_connection_broken_while_the_writer_sends_ends_it_quietly() -> None:
    """Regression (issue 11): frames still queued when the connection broke.

    The writer, blocked sending one frame, took the queued ones afterwards and
    died of trio.EndOfChannel, killing the client (and leaving a dead mount).
    Now every call fails with EIO, nothing more is sent and the channel closes.
    """
    to_server, server_end = trio.testing.lockstep_stream_one_way_pair()
    server_reply, from_server = trio.testing.memory_stream_one_way_pair()
    client = P9Client(from_server, to_server, timeout=5)
    results: list[object] = []

    async def call(fid: int) -> None:
        results.append(await call_result(client, m.Tclunk(fid), m.Rclunk))

    async with trio.open_nursery() as nursery:
        await client.start(nursery)
        nursery.start_soon(call, 1)
        await trio.testing.wait_all_tasks_blocked()  # the writer is in send_all
        nursery.start_soon(call, 2)
        nursery.start_soon(call, 3)
        await trio.testing.wait_all_tasks_blocked()  # two frames queued behind it
        await server_reply.send_all(encode(777, m.Rclunk()))  # a tag nobody asked on
        await trio.testing.wait_all_tasks_blocked()
        assert client.dead
        assert results == [errno.EIO] * 3
        # The server reads on: at most the frame under way arrives, then EOF.
        received = b""
        with trio.fail_after(1):
            while data := await server_end.receive_some(65536):
                received += data
                await trio.testing.wait_all_tasks_blocked()
        assert len(received) <= len(encode(0, m.Tclunk(1)))
        assert await call_result(client, m.Tclunk(4), m.Rclunk) == errno.EIO
        await client.aclose()
