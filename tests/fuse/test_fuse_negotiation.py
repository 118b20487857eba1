"""Negotiating the qsf extensions (docs/PROTOCOL.md): granted, declined every way a
server can, and against diod (which has none), plus the checks of their replies."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from pathlib import Path

import pytest
import support
import trio
import trio.testing
from test_fuse_client import FakeServer

from qsf_fuse.client import BadReply, P9Client
from qsf_p9 import constants as c
from qsf_p9 import messages as m


async def _negotiate_against(answers: list[m.Message]) -> tuple[P9Client, list[m.Message]]:
    """Negotiate with qsf=True against a server answering each Tversion in turn."""
    seen: list[m.Message] = []
    async with trio.open_nursery() as nursery:
        client_end, server_end = trio.testing.memory_stream_pair()
        client = P9Client(client_end, client_end, timeout=5)
        await client.start(nursery)
        server = FakeServer(server_end)

        async def answer() -> None:
            for reply in answers:
                tag, request = await server.request()
                seen.append(request)
                await server.reply(tag, reply)

        nursery.start_soon(answer)
        await client.negotiate(65536, qsf=True)
        nursery.cancel_scope.cancel()
    return client, seen


async def test_granted() -> None:
    client, seen = await _negotiate_against([m.Rversion(65536, c.VERSION_QSF)])
    assert client.qsf and seen == [m.Tversion(65536, c.VERSION_QSF)]


@pytest.mark.parametrize("refusal", [m.Rlerror(errno.EIO), m.Rversion(65536, b"unknown"),
                                     m.Rversion(65536, b"9P2000.u")],
                         ids=["rlerror", "unknown", "other-version"])
async def test_refused_then_plain(refusal: m.Message) -> None:
    client, seen = await _negotiate_against([refusal, m.Rversion(8192, c.VERSION_9P2000L)])
    assert not client.qsf and client.msize == 8192
    assert seen == [m.Tversion(65536, c.VERSION_QSF), m.Tversion(65536, c.VERSION_9P2000L)]


async def test_declined_with_plain_version() -> None:
    client, seen = await _negotiate_against([m.Rversion(65536, c.VERSION_9P2000L)])
    assert not client.qsf and len(seen) == 1


@pytest.mark.diod
def test_diod_refuses_and_keeps_the_connection(tmp_path: Path) -> None:
    """diod answers the qsf version with Rlerror and then speaks plain 9P2000.L."""
    diod = support.need_program("diod")
    mine, theirs = socket.socketpair()
    server = subprocess.Popen([diod, "-f", "-n", "-c", "/dev/null", "-L", "stderr", "-e",
                               str(tmp_path), "--rfdno", "0", "--wfdno", "1"],
                              stdin=theirs, stdout=theirs, stderr=subprocess.DEVNULL)
    theirs.close()

    async def session() -> tuple[bool, m.Qid]:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(mine))
        async with trio.open_nursery() as nursery:
            client = P9Client(stream, stream, timeout=10)
            await client.start(nursery)
            await client.negotiate(65536, qsf=True)
            _, qid = await client.attach(b"", os.fsencode(tmp_path), os.getuid())
            qsf = client.qsf
            await client.aclose()
            nursery.cancel_scope.cancel()
        return qsf, qid

    try:
        qsf, qid = trio.run(session)
        assert not qsf and qid.type & c.QTDIR
    finally:
        server.kill()
        server.wait()


async def test_bad_event_replies_are_refused() -> None:
    async with trio.open_nursery() as nursery:
        client_end, server_end = trio.testing.memory_stream_pair()
        client = P9Client(client_end, client_end, timeout=5)
        await client.start(nursery)
        server = FakeServer(server_end)

        async def grant() -> None:
            tag, _ = await server.request()
            await server.reply(tag, m.Rversion(65536, c.VERSION_QSF))

        nursery.start_soon(grant)
        await client.negotiate(65536, qsf=True)
        for bad in (m.Rqsfwatch(()), m.Rqsfwatch((m.QsfEvent(99, 1, 2, b"x"),)),
                    m.Rqsfwatch((m.QsfEvent(c.QSF_EV_CHANGED, 1, 2, b"x" * 200),))):
            async def answer(bad: m.Message = bad) -> None:
                tag, _ = await server.request()
                await server.reply(tag, bad)

            nursery.start_soon(answer)
            with pytest.raises(BadReply):
                await client.call(m.Tqsfwatch(64), m.Rqsfwatch)
        nursery.cancel_scope.cancel()
