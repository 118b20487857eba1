"""Concurrency, Tflush and limits, driven through the real connection loop."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
from pathlib import Path

import trio
from server_gate import GatedExport, wait_until
from server_p9client import ROOT, ConnectionClosed, served, server_command, subprocess_server

from qsf_p9 import constants as c
from qsf_p9 import messages as m


def make_export(base: Path) -> Path:
    export = base / "export"
    export.mkdir()
    (export / "file").write_bytes(b"0123456789" * 1000)
    return export


async def test_slow_read_and_fsync_do_not_hold_up_getattr(tmp_path: Path) -> None:
    gated = GatedExport(make_export(tmp_path))
    try:
        async with served(gated.path, export=gated) as client:
            fid = await client.open(b"file", flags=c.L_O_RDWR)
            read_tag = await client.send(m.Tread(fid, 0, 10))
            sync_tag = await client.send(m.Tfsync(fid, 0))
            await wait_until(lambda: gated.waiting == 2)
            # Both are stuck in their threads; getattr and walk answer meanwhile.
            for _ in range(3):
                attr = await client.ok(m.Tgetattr(fid, c.GETATTR_BASIC))
                assert attr.size == 10000
            await client.walk(b"file")
            assert not client.pending
            gated.gate.set()
            # Replies left out of order: the later getattrs came first.
            assert bytes((await client.reply(read_tag)).data) == b"0123456789"
            assert isinstance(await client.reply(sync_tag), m.Rfsync)
    finally:
        gated.close()


async def test_writes_queued_behind_a_slow_one_share_one_thread_call(tmp_path: Path) -> None:
    """Twrites that arrive while one is in its worker thread go in one next thread
    call, in order; a flushed or clunked one still lands in its own file."""
    export = make_export(tmp_path)
    (export / "other").write_bytes(b"")
    gated = GatedExport(export, gate_writes=True)
    try:
        async with served(gated.path, export=gated) as client:
            fid = await client.open(b"file", flags=c.L_O_RDWR)
            first = await client.send(m.Twrite(fid, 0, b"A" * 10))
            await wait_until(lambda: gated.waiting == 1)
            tags = [await client.send(m.Twrite(fid, 10 * i, bytes([65 + i]) * 10))
                    for i in range(1, 20)]
            flush = await client.send(m.Tflush(tags[5]))
            # The fid goes while its writes wait; its descriptor stays theirs, and
            # a file opened meanwhile (which may get the same number) is not written.
            await client.clunk(fid)
            other = await client.open(b"other", flags=c.L_O_RDWR)
            gated.gate.set()
            assert await client.reply(first) == m.Rwrite(10)
            replies = dict([await client.receive() for _ in range(len(tags))])
            assert replies.pop(flush) == m.Rflush()  # the flushed write is never answered
            assert replies == {tag: m.Rwrite(10) for tag in tags if tag != tags[5]}
            session = client.connection.session  # type: ignore[attr-defined]
            assert session._writes.batches == 2
            await client.clunk(other)
        expected = b"".join(bytes([65 + i]) * 10 for i in range(20))
        assert (export / "file").read_bytes()[:200] == expected
        assert (export / "other").read_bytes() == b""
    finally:
        gated.close()


async def test_flush_abandons_a_request_and_answers_after_it(tmp_path: Path) -> None:
    gated = GatedExport(make_export(tmp_path))
    try:
        async with served(gated.path, export=gated) as client:
            fid = await client.open(b"file")
            await client.send(m.Tread(fid, 0, 10), tag=1)
            await wait_until(lambda: gated.waiting == 1)
            await client.send(m.Tflush(1), tag=2)
            # Rflush waits for the read's thread; nothing arrives meanwhile.
            with trio.move_on_after(0.3) as idle:
                await client.receive()
            assert idle.cancelled_caught
            gated.gate.set()
            tag, reply = await client.receive()
            assert (tag, reply) == (2, m.Rflush())
            # Tag 1 is free again and no late Rread for it ever comes.
            await client.send(m.Tgetattr(fid, c.GETATTR_BASIC), tag=1)
            tag, reply = await client.receive()
            assert tag == 1 and isinstance(reply, m.Rgetattr)
            # Flushing an unknown or finished tag answers at once.
            await client.send(m.Tflush(77), tag=3)
            assert await client.receive() == (3, m.Rflush())
            await client.send(m.Tflush(3), tag=3)  # itself
            assert await client.receive() == (3, m.Rflush())
    finally:
        gated.close()


async def test_reply_before_flush_keeps_its_order(tmp_path: Path) -> None:
    async with served(make_export(tmp_path)) as client:
        fid = await client.open(b"file")
        # Many reads then a flush of the last: if its Rread is sent, it precedes Rflush.
        for tag in range(10, 60):
            await client.send(m.Tread(fid, 0, 4096), tag=tag)
        await client.send(m.Tflush(59), tag=60)
        order: list[int] = []
        while not set(range(10, 59)) | {60} <= set(order):
            tag, reply = await client.receive()
            assert tag not in order
            order.append(tag)
            if tag == 60:
                assert reply == m.Rflush()
        # Read 59 was either answered before the Rflush or never.
        with trio.move_on_after(0.2):
            order.append((await client.receive())[0])
        assert order.count(59) <= 1
        if 59 in order:
            assert order.index(59) < order.index(60)


async def test_in_flight_requests_are_bounded(tmp_path: Path) -> None:
    gated = GatedExport(make_export(tmp_path))
    try:
        async with served(gated.path, export=gated, max_in_flight=16, max_bulk=8) as client:
            connection = client.connection  # type: ignore[attr-defined]
            fid = await client.open(b"file")
            for tag in range(1, 41):
                await client.send(m.Tread(fid, tag, 1), tag=tag)
            await wait_until(lambda: gated.waiting == 8)
            await trio.sleep(0.2)
            # Only 8 bulk requests run; the reader waits for a slot and reads no more.
            assert gated.waiting == 8 and connection.in_flight <= 16
            gated.gate.set()
            replies = {}
            while len(replies) < 40:
                tag, reply = await client.receive()
                replies[tag] = reply
            assert all(bytes(replies[t].data) == b"0123456789"[t % 10:t % 10 + 1]
                       for t in range(1, 41))
    finally:
        gated.close()


async def test_duplicate_tag_in_flight(tmp_path: Path) -> None:
    gated = GatedExport(make_export(tmp_path))
    try:
        async with served(gated.path, export=gated) as client:
            fid = await client.open(b"file")
            await client.send(m.Tread(fid, 0, 1), tag=5)
            await wait_until(lambda: gated.waiting == 1)
            await client.send(m.Tgetattr(fid, 0), tag=5)
            assert await client.receive() == (5, m.Rlerror(errno.EBUSY))
            gated.gate.set()
            tag, reply = await client.receive()
            assert tag == 5 and bytes(reply.data) == b"0"
    finally:
        gated.close()


async def test_fid_limit(tmp_path: Path) -> None:
    async with served(make_export(tmp_path), max_fids=10) as client:
        fids = [await client.walk() for _ in range(9)]
        assert await client.error(m.Twalk(ROOT, 500, ())) == errno.EMFILE
        assert await client.error(m.Txattrwalk(ROOT, 501, b"")) == errno.EMFILE
        await client.clunk(fids[0])
        await client.walk()


async def test_replies_stay_below_msize(tmp_path: Path) -> None:
    export = make_export(tmp_path)
    for index in range(50):
        (export / (f"{index:03d}" + "n" * 200)).write_bytes(b"")
    os.symlink("t" * 4000, export / "longlink")
    os.symlink("t" * 4095, export / "longest")
    async with served(export, handshake=False) as client:
        client.msize = 4096
        await client.handshake()
        fid = await client.open(b"file")
        reply = await client.ok(m.Tread(fid, 0, 1 << 20))
        assert len(reply.data) == 4096 - 12
        entries = await client.listdir()
        assert len(entries) == 55
        link = await client.walk(b"longlink")
        assert len((await client.ok(m.Treadlink(link))).target) == 4000
        longest = await client.walk(b"longest")
        assert await client.error(m.Treadlink(longest)) == errno.ENAMETOOLONG
        # Every frame the server sent was below msize.
        data = bytes(client.received)
        pos = 0
        while pos < len(data):
            (size,) = struct.unpack_from("<I", data, pos)
            assert size < 4096
            pos += size


async def test_oversized_frame_closes_cleanly(tmp_path: Path) -> None:
    async with served(make_export(tmp_path), handshake=False) as client:
        client.msize = 8192
        await client.handshake()
        await client.send_raw(struct.pack("<IBH", 8193, c.TWRITE, 1) + b"\0" * 100)
        with trio.fail_after(10):
            try:
                tag, reply = await client.receive()
                raise AssertionError(f"reply after a framing error: {tag} {reply}")
            except ConnectionClosed:
                pass
        connection = client.connection  # type: ignore[attr-defined]
        assert connection.session is None  # closed: every fid released


async def test_oversized_frame_ends_the_command(tmp_path: Path) -> None:
    async with subprocess_server(make_export(tmp_path)) as (client, process):
        await client.send_raw(struct.pack("<IBH", (1 << 20) + 1, c.TWRITE, 1))
        with trio.fail_after(10):
            try:
                await client.receive()
                raise AssertionError("reply after a framing error")
            except ConnectionClosed:
                pass
    assert process.returncode == 1
    assert process.stderr is not None


async def test_command_exits_zero_at_eof(tmp_path: Path) -> None:
    async with subprocess_server(make_export(tmp_path)) as (client, process):
        assert await client.read_file(b"file") == b"0123456789" * 1000
        # Half-close: requests sent before EOF still get their replies.
        fid = await client.open(b"file")
        tags = [await client.send(m.Tread(fid, 0, 5)) for _ in range(5)]
        await client.stream.send_eof()  # type: ignore[attr-defined]
        for tag in tags:
            assert bytes((await client.reply(tag)).data) == b"01234"
    assert process.returncode == 0




async def test_command_msize_option(tmp_path: Path) -> None:
    async with subprocess_server(make_export(tmp_path), "--msize", "8192") as (client, process):
        assert client.msize == 8192
        fid = await client.open(b"file")
        assert len((await client.ok(m.Tread(fid, 0, 1 << 20))).data) == 8192 - 12
    assert process.returncode == 0
    for bad in ("100", str((1 << 20) + 1), "x"):
        done = subprocess.run(server_command(tmp_path, "--msize", bad), capture_output=True,
                              stdin=subprocess.DEVNULL, check=False)
        assert done.returncode == 2 and b"msize" in done.stderr
    done = subprocess.run(server_command(tmp_path / "missing"), capture_output=True,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 1 and b"cannot serve" in done.stderr


async def test_tversion_abandons_requests_in_flight(tmp_path: Path) -> None:
    gated = GatedExport(make_export(tmp_path))
    try:
        async with served(gated.path, export=gated) as client:
            fid = await client.open(b"file")
            await client.send(m.Tread(fid, 0, 10), tag=1)
            await wait_until(lambda: gated.waiting == 1)
            await client.send(m.Tversion(8192, b"9P2000.L"), tag=c.NOTAG)
            with trio.move_on_after(0.3) as idle:
                await client.receive()  # Rversion waits for the read's thread
            assert idle.cancelled_caught
            gated.gate.set()
            tag, reply = await client.receive()
            assert (tag, reply) == (c.NOTAG, m.Rversion(8192, b"9P2000.L"))
            # The read was abandoned: no reply for tag 1, and its fid is gone.
            await client.send(m.Tgetattr(fid, 0), tag=1)
            assert await client.receive() == (1, m.Rlerror(errno.EBADF))
    finally:
        gated.close()


async def test_a_tag_is_free_as_soon_as_its_reply_is_queued(tmp_path: Path) -> None:
    # A client may reuse a tag the moment it reads the reply, which may be before
    # the request's task runs again after queueing it (here: made to sleep). The
    # tag must be free by then, or the reuse gets a false EBUSY.
    async with served(make_export(tmp_path)) as client:
        connection = client.connection  # type: ignore[attr-defined]
        queue = connection._queue

        async def queue_then_stall(reply: m.Message, tag: int) -> None:
            await queue(reply, tag)
            if isinstance(reply, m.Rreaddir):
                await trio.sleep(0.2)

        connection._queue = queue_then_stall
        fid = await client.open(flags=c.L_O_RDONLY | c.L_O_DIRECTORY)
        for _ in range(3):
            assert isinstance(await client.reply(await client.send(
                m.Treaddir(fid, 0, 4096), tag=5)), m.Rreaddir)
            reply = await client.reply(await client.send(m.Tgetattr(fid, 1), tag=5))
            assert isinstance(reply, m.Rgetattr), reply
