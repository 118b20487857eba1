"""Mutated 9P sessions through the real connection loop and file system backend.

Each session is a plausible request sequence (version, attach, walks with
hostile names, opens, reads, writes, creations, xattrs, locks, flushes...),
encoded, then mutated at the byte level (flips, cuts, insertions, forged
sizes, repeated frames) and trickled in random pieces into an in-process
Connection serving a temporary export. Invariants per session: it ends (no
hang), nothing is logged with a traceback, every reply frame decodes and
answers a tag that was sent, and frames stay below the negotiated msize.
Over the run: no descriptor leaks, bounded memory, canaries outside the
export never read, touched or sent.

The default run is short and fixed-seed; the long one is marked slow:
  make fuzz, or: QSF_FUZZ_SESSIONS=20000 QSF_FUZZ_SEED=1 \
      /opt/qsf-venv/bin/pytest -m slow tests/server/test_server_fuzz.py
"""

from __future__ import annotations

import logging
import os
import random
import resource
import secrets
import shutil
import stat
import struct
from pathlib import Path

import pytest
import trio
import trio.testing
from server_watch import Inotify

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_p9.codec import EOF, NEED_DATA, Decoder, encode
from qsf_server.connection import Connection
from qsf_server.fs import Export

NAMES = [b"a", b"b", b"sub", b"link", b"fifo", b"..", b".", b"", b"/", b"a/b", b"../outside",
         b"x\0", b"outside", b"secret.txt", b"n" * 300]
XATTRS = [b"user.a", b"user.b", b"security.capability", b"trusted.x", b"", b"user." + b"x" * 300]


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None or record.levelno >= logging.ERROR:
            self.tracebacks.append(self.format(record))


def random_request(rng: random.Random) -> m.Message:
    if rng.random() < 0.02:
        return m.Tversion(rng.choice([8192, 0, 100, 1 << 20]), rng.choice([b"9P2000.L", b"x"]))
    fid = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, c.NOFID, rng.getrandbits(32)])
    other = rng.randrange(8)
    name = rng.choice(NAMES)
    big = rng.choice([0, 1, 10, 4096, 1 << 20, (1 << 32) - 1])
    offset = rng.choice([0, 0, 3, 4096, 1 << 40, (1 << 63) - 1, (1 << 64) - 1])
    makers = [
        lambda: m.Twalk(fid, other, tuple(rng.choice(NAMES) for _ in range(rng.randrange(5)))),
        lambda: m.Twalk(0, other, ()),
        lambda: m.Tlopen(fid, rng.choice([0, 1, 2, 3, c.L_O_TRUNC | 2, c.L_O_DIRECTORY,
                                          rng.getrandbits(32)])),
        lambda: m.Tlcreate(fid, name, rng.choice([0, 1, 2, c.L_O_APPEND | 1]),
                           rng.choice([0o644, 0o4755, 0o170777, rng.getrandbits(32)]), 0),
        lambda: m.Tread(fid, offset, big),
        lambda: m.Twrite(fid, offset % 100_000, b"w" * rng.choice([0, 1, 100, 5000])),
        lambda: m.Tclunk(fid),
        lambda: m.Tremove(fid),
        lambda: m.Tgetattr(fid, c.GETATTR_ALL),
        lambda: m.Tsetattr(fid, rng.getrandbits(9), rng.getrandbits(16), 1000, 1000,
                           rng.choice([0, 10, 1 << 30]), rng.getrandbits(33),
                           rng.randrange(2 * 10**9), rng.getrandbits(33),
                           rng.randrange(2 * 10**9)),
        lambda: m.Treaddir(fid, rng.choice([0, 1, 2, 5, 1 << 40]), big),
        lambda: m.Tmkdir(fid, name, 0o755, 0),
        lambda: m.Tsymlink(fid, name, rng.choice([b"../outside", b"/etc/passwd", b"a", b""]), 0),
        lambda: m.Tmknod(fid, name, rng.choice([stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK,
                                               stat.S_IFSOCK, stat.S_IFREG]) | 0o644, 1, 3, 0),
        lambda: m.Tlink(fid, other, name),
        lambda: m.Trename(fid, other, name),
        lambda: m.Trenameat(fid, name, other, rng.choice(NAMES)),
        lambda: m.Tunlinkat(fid, name, rng.choice([0, c.AT_REMOVEDIR, 0xFFFF])),
        lambda: m.Treadlink(fid),
        lambda: m.Tstatfs(fid),
        lambda: m.Tfsync(fid, rng.randrange(2)),
        lambda: m.Txattrwalk(fid, other, rng.choice(XATTRS)),
        lambda: m.Txattrcreate(fid, rng.choice(XATTRS), rng.choice([0, 1, 5, 70000]),
                               rng.randrange(4)),
        lambda: m.Tlock(fid, rng.randrange(4), rng.randrange(4), offset, big, 1, b"fuzz"),
        lambda: m.Tgetlock(fid, rng.randrange(4), offset, big, 1, b"fuzz"),
        lambda: m.Tflush(rng.randrange(1, 40)),
        lambda: m.Tattach(fid, rng.choice([c.NOFID, 0]), b"", rng.choice([b"", b"/", b".."]), 0),
        lambda: m.Tauth(fid, b"", b"", 0),
    ]
    return rng.choice(makers)()


def session_bytes(rng: random.Random, msize: int) -> bytes:
    # A prologue that makes fids 1-7 useful: files and directories, open or not.
    prologue: list[m.Message] = [
        m.Tattach(0, c.NOFID, b"", b"", 0),
        m.Twalk(0, 1, (b"sub",)), m.Twalk(0, 2, (b"a",)), m.Tlopen(2, c.L_O_RDWR),
        m.Twalk(0, 3, ()), m.Tlopen(3, c.L_O_RDONLY | c.L_O_DIRECTORY),
        m.Twalk(0, 4, (b"sub", b"b")), m.Twalk(0, 5, (b"link",)), m.Twalk(0, 6, ()),
        m.Twalk(1, 7, (b"b",)), m.Tlopen(7, c.L_O_RDONLY),
    ]
    frames = [encode(c.NOTAG, m.Tversion(msize, b"9P2000.L"))]
    frames += [encode(tag, message) for tag, message in enumerate(prologue[:rng.randrange(12)], 1)]
    for _ in range(rng.randrange(5, 40)):
        tag = rng.randrange(1, 40) if rng.random() < 0.2 else len(frames) + 1
        try:
            frames.append(encode(tag, random_request(rng)))
        except ValueError:
            continue  # a field too wide for the wire: the encoder refused it
    data = bytearray(b"".join(frames))
    for _ in range(rng.choice([0, 0, 1, 2, 5])):
        mutation = rng.randrange(6)
        if mutation == 0 and data:  # flip bytes
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
        elif mutation == 1:  # cut
            del data[rng.randrange(len(data) + 1):]
        elif mutation == 2:  # insert noise
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 30))
        elif mutation == 3 and frames:  # repeat a frame
            frame = rng.choice(frames)
            at = rng.randrange(len(data) + 1)
            data[at:at] = frame * rng.randrange(1, 4)
        elif mutation == 4 and len(data) > 20:  # forge a size field somewhere
            at = rng.randrange(len(data) - 4)
            data[at:at + 4] = struct.pack("<I", rng.choice([0, 6, 7, 8, msize, msize + 1,
                                                             rng.getrandbits(32)]))
        elif mutation == 5:  # a random frame
            body = rng.randbytes(rng.randrange(0, 40))
            data += struct.pack("<IBH", 7 + len(body), rng.randrange(256),
                                rng.randrange(1 << 16)) + body
    return bytes(data)


def sent_tags(data: bytes) -> set[int]:
    """Tags of the frames as a server delimits them (by size[4], until nonsense)."""
    tags = set()
    pos = 0
    while len(data) - pos >= 7:
        size, _, tag = struct.unpack_from("<IBH", data, pos)
        if size < 7:
            break
        tags.add(tag)
        pos += size
    return tags


async def run_session(export: Export, data: bytes, rng: random.Random) -> bytes:
    client, server = trio.testing.memory_stream_pair()
    connection = Connection(server, server, export, max_in_flight=32, max_bulk=8, max_fids=64)
    received = bytearray()

    async def pump() -> None:
        pos = 0
        try:
            while pos < len(data):
                step = rng.choice([1, 7, 100, 4096, len(data)])
                await client.send_all(data[pos:pos + step])
                pos += step
                if rng.random() < 0.1:
                    await trio.sleep(0)
        except trio.BrokenResourceError:
            pass  # the server closed the connection (a framing error)
        await client.send_stream.aclose()

    async def drain() -> None:
        while True:
            chunk = await client.receive_some(1 << 20)
            if not chunk:
                return
            received.extend(chunk)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.serve)
            nursery.start_soon(pump)
            nursery.start_soon(drain)
    return bytes(received)


def check_replies(replies: bytes, tags: set[int]) -> None:
    """Every reply decodes, answers a sent tag, and is smaller than the msize in force."""
    decoder = Decoder(replies=True)
    if replies:
        decoder.receive_data(replies)
    decoder.receive_data(b"")
    msize = c.MAX_MSIZE
    pos = 0
    while True:
        item = decoder.next_message()
        if item is EOF:
            assert pos == len(replies)
            return
        assert item is not NEED_DATA
        tag, reply = item
        (size,) = struct.unpack_from("<I", replies, pos)
        pos += size
        assert tag in tags, f"reply {reply!r} to tag {tag}, which was never sent"
        if isinstance(reply, m.Rversion):
            if reply.version == c.VERSION_9P2000L:
                msize = reply.msize
        else:
            assert size < msize, f"{reply!r}: {size} bytes, msize {msize}"


def fresh_export(base: Path) -> Path:
    export = base / "export"
    if export.exists():
        shutil.rmtree(export)
    export.mkdir()
    (export / "a").write_bytes(b"a" * 10000)
    (export / "sub").mkdir()
    (export / "sub" / "b").write_bytes(b"b")
    os.symlink("../outside", export / "link")
    os.mkfifo(export / "fifo")
    return export


def fuzz(base: Path, sessions: int, seed: int) -> None:
    outside = base / "outside"
    outside.mkdir()
    canary = b"CANARY-" + secrets.token_hex(16).encode()
    (outside / "secret.txt").write_bytes(canary)
    export_path = fresh_export(base)
    watch = Inotify([outside])
    recorder = Recorder()
    logger = logging.getLogger("qsf_server")
    logger.addHandler(recorder)
    fds_before = len(os.listdir("/proc/self/fd"))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rng = random.Random(seed)
    try:
        for number in range(sessions):
            if number % 200 == 0:
                export_path = fresh_export(base)
            msize = rng.choice([4096, 8192, 65536, 1 << 20])
            data = session_bytes(rng, msize)
            export = Export(str(export_path))
            try:
                replies = trio.run(run_session, export, data, random.Random(rng.random()))
            finally:
                export.close()
            assert not recorder.tracebacks, f"session {number}: {recorder.tracebacks[:3]}"
            check_replies(replies, sent_tags(data))
            assert canary not in replies
        assert watch.events() == [], "something touched the directory outside the export"
        assert (outside / "secret.txt").read_bytes() == canary
        assert os.listdir(outside) == ["secret.txt"]
        assert len(os.listdir("/proc/self/fd")) <= fds_before + 2, "descriptors leaked"
        growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        assert growth_kib < 300 * 1024, f"memory grew by {growth_kib} KiB"
    finally:
        logger.removeHandler(recorder)
        watch.close()


def test_fuzz_sessions_short(tmp_path: Path) -> None:
    fuzz(tmp_path, sessions=int(os.environ.get("QSF_FUZZ_SESSIONS_SHORT", "5000")), seed=20261126)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fuzz_sessions_long(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    selected = str(request.config.getoption("markexpr", ""))
    if "slow" not in selected or "not slow" in selected:
        pytest.skip("the long fuzz run: select it with -m slow (make fuzz)")
    sessions = int(os.environ.get("QSF_FUZZ_SESSIONS", "20000"))
    fuzz(tmp_path, sessions=sessions, seed=int(os.environ.get("QSF_FUZZ_SEED", "1")))
