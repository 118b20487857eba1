"""A small trio 9P2000.L test client on qsf_p9, and ways to run the server for tests.

`served(root)` runs the real Connection in-process over trio memory streams;
`subprocess_server(root)` runs `python -m qsf_server` on a socketpair. Both
yield a Client that has negotiated the version and attached fid 0 (ROOT).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import support
import trio
import trio.testing

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_p9.codec import EOF, NEED_DATA, Decoder, encode
from qsf_server.connection import Connection
from qsf_server.fs import Export

ROOT = 0
R = TypeVar("R", bound=m.Message)


class P9Error(Exception):
    def __init__(self, errno: int) -> None:
        super().__init__(f"Rlerror {errno} ({os.strerror(errno)})")
        self.errno = errno


class ConnectionClosed(Exception):
    pass


class Client:
    """Sends requests on chosen or automatic tags and sorts replies by tag."""

    def __init__(self, stream: trio.abc.Stream, msize: int = c.MAX_MSIZE) -> None:
        self.stream = stream
        self.decoder = Decoder(replies=True, msize=msize)
        self.pending: dict[int, m.Message] = {}
        self.next_tag = 1
        self.next_fid = 100
        self.msize = msize
        self.closed = False
        self.received = bytearray()  # every byte the server sent, for leak checks

    def fid(self) -> int:
        self.next_fid += 1
        return self.next_fid

    def tag(self) -> int:
        self.next_tag = self.next_tag % 0xFFFE + 1
        return self.next_tag

    async def send(self, message: m.Message, tag: int | None = None) -> int:
        tag = self.tag() if tag is None else tag
        await self.stream.send_all(encode(tag, message))
        return tag

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> tuple[int, m.Message]:
        """The next reply frame in arrival order; ConnectionClosed at EOF."""
        while True:
            item = self.decoder.next_message()
            if item is EOF:
                raise ConnectionClosed
            if item is NEED_DATA:
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    self.closed = True
                self.received += data
                self.decoder.receive_data(data)
                continue
            return item

    async def reply(self, tag: int) -> m.Message:
        while tag not in self.pending:
            got_tag, message = await self.receive()
            assert got_tag not in self.pending, f"two replies on tag {got_tag}"
            self.pending[got_tag] = message
        return self.pending.pop(tag)

    async def call(self, message: m.Message) -> m.Message:
        return await self.reply(await self.send(message))

    async def ok(self, message: m.Message, expected: type[R] | None = None) -> Any:
        """The reply, which must be the success reply of `message`; P9Error otherwise."""
        reply = await self.call(message)
        if isinstance(reply, m.Rlerror):
            raise P9Error(reply.ecode)
        want = expected or m.REPLY_TO[type(message)]
        assert isinstance(reply, want), f"{type(message).__name__} -> {reply!r}"
        return reply

    async def error(self, message: m.Message) -> int:
        """The errno the request fails with (it must fail)."""
        reply = await self.call(message)
        assert isinstance(reply, m.Rlerror), f"{type(message).__name__} succeeded: {reply!r}"
        return reply.ecode

    # -- conveniences ------------------------------------------------------

    async def handshake(self, aname: bytes = b"") -> None:
        reply = await self.reply(await self.send(m.Tversion(self.msize, b"9P2000.L"),
                                                 tag=c.NOTAG))
        assert isinstance(reply, m.Rversion) and reply.version == b"9P2000.L", reply
        self.msize = reply.msize
        await self.ok(m.Tattach(ROOT, c.NOFID, b"", aname, 0))

    async def walk(self, *names: bytes, start: int = ROOT) -> int:
        fid = self.fid()
        reply = await self.ok(m.Twalk(start, fid, tuple(names)))
        if len(reply.wqids) != len(names):
            raise P9Error(2)  # ENOENT, as Linux reads a partial walk
        return fid

    async def open(self, *names: bytes, flags: int = c.L_O_RDONLY) -> int:
        fid = await self.walk(*names)
        await self.ok(m.Tlopen(fid, flags))
        return fid

    async def read_all(self, fid: int) -> bytes:
        data = b""
        while True:
            reply = await self.ok(m.Tread(fid, len(data), self.msize - 24))
            if not reply.data:
                return data
            data += bytes(reply.data)

    async def read_file(self, *names: bytes) -> bytes:
        fid = await self.open(*names)
        try:
            return await self.read_all(fid)
        finally:
            await self.ok(m.Tclunk(fid))

    async def listdir(self, *names: bytes) -> list[m.Dirent]:
        fid = await self.open(*names, flags=c.L_O_RDONLY | c.L_O_DIRECTORY)
        entries: list[m.Dirent] = []
        offset = 0
        try:
            while True:
                reply = await self.ok(m.Treaddir(fid, offset, self.msize - 24))
                if not reply.entries:
                    return entries
                entries.extend(reply.entries)
                offset = reply.entries[-1].offset
        finally:
            await self.ok(m.Tclunk(fid))

    async def create(self, name: bytes, data: bytes = b"", *names: bytes,
                     mode: int = 0o644) -> None:
        fid = await self.walk(*names)
        await self.ok(m.Tlcreate(fid, name, c.L_O_RDWR, mode, 0))
        if data:
            reply = await self.ok(m.Twrite(fid, 0, data))
            assert reply.count == len(data)
        await self.ok(m.Tclunk(fid))

    async def clunk(self, fid: int) -> None:
        await self.ok(m.Tclunk(fid))


@asynccontextmanager
async def served(root: str | os.PathLike[str], *, handshake: bool = True, aname: bytes = b"",
                 export: Export | None = None, **options: Any) -> AsyncIterator[Client]:
    """The real Connection on `root` in this process; EOF and a clean end on exit."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    owned = export is None
    export = export or Export(os.fspath(root))
    connection = Connection(server_stream, server_stream, export, **options)
    client = Client(client_stream)
    client.connection = connection  # type: ignore[attr-defined]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.serve)
            with trio.fail_after(60):
                if handshake:
                    await client.handshake(aname)
                yield client
                await client_stream.send_stream.aclose()
    finally:
        if owned:
            export.close()


def server_command(root: str | os.PathLike[str], *args: str) -> list[str]:
    return [sys.executable, "-m", "qsf_server", *args, os.fspath(root)]


@asynccontextmanager
async def subprocess_server(root: str | os.PathLike[str], *args: str,
                            prefix: Sequence[str] = (), handshake: bool = True
                            ) -> AsyncIterator[tuple[Client, subprocess.Popen[bytes]]]:
    """`python -m qsf_server ROOT` on a socketpair (its stdin and stdout)."""
    ours, theirs = socket.socketpair()
    process = subprocess.Popen([*prefix, *server_command(root, *args)], stdin=theirs,
                               stdout=theirs, stderr=subprocess.PIPE,
                               cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                                   os.path.abspath(__file__)))))
    theirs.close()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    client = Client(stream)
    try:
        with trio.fail_after(60):
            if handshake:
                await client.handshake()
            yield client, process
    finally:
        await stream.aclose()
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()


def check_user_can_run_the_server() -> None:
    """Skip (fail under CI) unless uid 1000 can run this venv's Python on the checkout."""
    probe = subprocess.run(support.as_user([sys.executable, "-c", "import qsf_server.cli"]),
                           cwd=support.REPO, capture_output=True, check=False)
    if probe.returncode != 0:
        why = probe.stderr.decode(errors="replace").strip()[-200:]
        support.missing(f"uid {support.QUBE_UID} able to run {sys.executable} and import "
                        f"the checkout ({why})")
