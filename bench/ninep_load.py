"""A 9P2000.L load generator that keeps many requests in flight.

Set-up (version, attach, walk, open) goes through the qsf_p9 codec. The load
loops are built to cost the client as little as possible, so that the server
is what gets measured: requests are encoded once as templates and copied with
only tag, fid and offset patched (struct.pack_into); replies are parsed only as
far as checking size, type, tag and the one count that matters. Each loop
returns the work done, the wall time and the generator's own CPU time.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from dataclasses import dataclass

from qsf_p9 import codec
from qsf_p9 import constants as c
from qsf_p9 import messages as m

HEADER = struct.Struct("<IBH")  # size[4] type[1] tag[2]
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
ROOT_FID = 0
RGETATTR_SIZE = 160  # a whole Rgetattr frame
RWALK_ONE_SIZE = 9 + 13  # an Rwalk frame with one qid
RWRITE_SIZE = 11


class LoadError(Exception):
    """The server answered something a correct server would not, or went away."""


@dataclass(frozen=True)
class LoadResult:
    operations: int  # completed operations (small ops) or requests (read/write)
    nbytes: int  # payload bytes moved (read/write), 0 for small ops
    seconds: float  # wall time of the loop
    client_cpu: float  # CPU seconds the generator itself used in the loop


class Connection:
    """One blocking 9P2000.L connection on a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.msize = c.MAX_MSIZE
        self._decoder = codec.Decoder(replies=True)
        self._buffer = bytearray(4 * c.MAX_MSIZE)
        self._view = memoryview(self._buffer)

    # -- set-up, through the codec -------------------------------------------------

    def call(self, message: m.Message, tag: int = 0) -> m.Message:
        """Send one request and return its reply; LoadError on Rlerror or a wrong reply."""
        self.sock.sendall(codec.encode(tag, message))
        while True:
            event = self._decoder.next_message()
            if event is codec.NEED_DATA:
                received = self.sock.recv(1 << 20)
                self._decoder.receive_data(received)
                continue
            if event is codec.EOF:
                raise LoadError(f"server closed the connection during {type(message).__name__}")
            reply_tag, reply = event
            if reply_tag != tag:
                raise LoadError(f"reply on tag {reply_tag}, expected {tag}")
            if isinstance(reply, m.Rlerror):
                raise LoadError(
                    f"{type(message).__name__} failed: {os.strerror(reply.ecode)} ({reply.ecode})"
                )
            if not isinstance(reply, m.REPLY_TO[type(message)]):
                raise LoadError(f"{type(reply).__name__} in reply to {type(message).__name__}")
            return reply

    def handshake(self, msize: int, aname: bytes, uname: bytes = b"") -> m.Rversion:
        """Tversion (9P2000.L at most `msize`) and Tattach of ROOT_FID."""
        reply = self.call(m.Tversion(msize=msize, version=c.VERSION_9P2000L), tag=c.NOTAG)
        assert isinstance(reply, m.Rversion)
        if reply.version != c.VERSION_9P2000L or not c.MIN_MSIZE <= reply.msize <= msize:
            raise LoadError(f"server offered {reply.version!r} msize {reply.msize}")
        self.msize = reply.msize
        self._decoder.msize = reply.msize
        self.call(m.Tattach(fid=ROOT_FID, afid=c.NOFID, uname=uname, aname=aname,
                            n_uname=os.geteuid()))
        return reply

    def open(self, fid: int, name: bytes, flags: int) -> None:
        """Walk ROOT_FID/name to `fid` and open it."""
        self.call(m.Twalk(fid=ROOT_FID, newfid=fid, wnames=(name,)))
        self.call(m.Tlopen(fid=fid, flags=flags))

    def create(self, fid: int, name: bytes, flags: int, mode: int = 0o644) -> None:
        """Create ROOT_FID/name, leaving `fid` open on it."""
        self.call(m.Twalk(fid=ROOT_FID, newfid=fid, wnames=()))
        self.call(m.Tlcreate(fid=fid, name=name, flags=flags, mode=mode, gid=os.getegid()))

    def clunk(self, fid: int) -> None:
        self.call(m.Tclunk(fid=fid))

    # -- the load loops --------------------------------------------------------------

    def _receive(self, start: int, end: int) -> tuple[int, int]:
        """Read more bytes after buffer[start:end], compacting first; returns the new span."""
        if start:
            self._buffer[: end - start] = self._view[start:end]
            end -= start
            start = 0
        received = self.sock.recv_into(self._view[end:])
        if received == 0:
            raise LoadError("server closed the connection")
        return start, end + received

    def _check_drained(self, start: int, end: int) -> None:
        if start != end:
            raise LoadError(f"{end - start} bytes from the server after the last reply")

    def _frame(self, start: int, end: int, expected: dict[int, int]) -> tuple[int, int, int]:
        """(size, type, tag) of the whole frame at `start`, or size 0 if it is incomplete.

        expected maps the in-flight tags to the reply type each awaits; an
        Rlerror, another type, an unknown tag or a bad size is a LoadError.
        """
        if end - start < 7:
            return 0, 0, 0
        size, type_, tag = HEADER.unpack_from(self._buffer, start)
        want = expected.get(tag)
        if want is None:
            raise LoadError(f"reply on tag {tag}, which is not in flight")
        if size < 7 or size > self.msize:
            raise LoadError(f"reply frame of {size} bytes (msize {self.msize})")
        if end - start < size:
            return 0, 0, 0
        if type_ != want:
            if type_ == c.RLERROR and size == 11:
                (ecode,) = U32.unpack_from(self._buffer, start + 7)
                raise LoadError(f"Rlerror {errno.errorcode.get(ecode, ecode)} on tag {tag}")
            raise LoadError(f"reply type {type_} on tag {tag}, expected {want}")
        return size, type_, tag

    def small_ops(self, names: list[bytes], operations: int, depth: int) -> LoadResult:
        """`operations` times walk(name) + getattr + clunk, `depth` chains in flight."""
        walks = [bytearray(codec.encode(0, m.Twalk(fid=ROOT_FID, newfid=0, wnames=(name,))))
                 for name in names]
        getattr_ = codec.encode(0, m.Tgetattr(fid=0, request_mask=c.GETATTR_BASIC))
        clunk = codec.encode(0, m.Tclunk(fid=0))
        rwalk, rgetattr, rclunk = c.TWALK + 1, c.TGETATTR + 1, c.TCLUNK + 1
        pack_u16, pack_u32 = U16.pack_into, U32.pack_into
        depth = min(depth, operations)
        fid_base = 1000  # slot s uses tag s and fid fid_base + s
        expected: dict[int, int] = {}
        out = bytearray()
        started = 0

        def walk(slot: int) -> None:
            nonlocal started
            at = len(out)
            out.extend(walks[started % len(walks)])
            pack_u16(out, at + 5, slot)
            pack_u32(out, at + 11, fid_base + slot)
            expected[slot] = rwalk
            started += 1

        def then(slot: int, template: bytes, reply_type: int) -> None:
            at = len(out)
            out.extend(template)
            pack_u16(out, at + 5, slot)
            pack_u32(out, at + 7, fid_base + slot)
            expected[slot] = reply_type

        done = 0
        start = end = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for slot in range(depth):
            walk(slot)
        while expected:
            if out:
                self.sock.sendall(out)
                out.clear()
            start, end = self._receive(start, end)
            while True:
                size, type_, tag = self._frame(start, end, expected)
                if not size:
                    break
                if type_ == rwalk:
                    if size != RWALK_ONE_SIZE:
                        raise LoadError(f"Rwalk of {size} bytes for one name")
                    then(tag, getattr_, rgetattr)
                elif type_ == rgetattr:
                    if size != RGETATTR_SIZE:
                        raise LoadError(f"Rgetattr of {size} bytes")
                    then(tag, clunk, rclunk)
                else:
                    done += 1
                    del expected[tag]
                    if started < operations:
                        walk(tag)
                start += size
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        self._check_drained(start, end)
        return LoadResult(done, 0, wall, cpu)

    def read(self, fid: int, size: int, depth: int) -> LoadResult:
        """Read the open `fid` from 0 to `size` in msize chunks, `depth` reads in flight."""
        chunk = self.msize - c.IOHDRSZ
        template = codec.encode(0, m.Tread(fid=fid, offset=0, count=chunk))
        pack_u16, pack_u64 = U16.pack_into, U64.pack_into
        rread = c.TREAD + 1
        expected: dict[int, int] = {}
        asked: dict[int, int] = {}  # tag -> count asked
        out = bytearray()
        next_offset = 0
        total = requests = 0

        def issue(slot: int) -> None:
            nonlocal next_offset
            at = len(out)
            out.extend(template)
            pack_u16(out, at + 5, slot)
            pack_u64(out, at + 11, next_offset)
            count = min(chunk, size - next_offset)
            U32.pack_into(out, at + 19, count)
            expected[slot] = rread
            asked[slot] = count
            next_offset += count

        start = end = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        slot = 0
        while slot < depth and next_offset < size:
            issue(slot)
            slot += 1
        while expected:
            if out:
                self.sock.sendall(out)
                out.clear()
            start, end = self._receive(start, end)
            while True:
                frame_size, _, tag = self._frame(start, end, expected)
                if not frame_size:
                    break
                (count,) = U32.unpack_from(self._buffer, start + 7)
                if count != asked[tag] or frame_size != codec.RREAD_OVERHEAD + count:
                    raise LoadError(f"Rread of {count} bytes in a {frame_size}-byte frame, "
                                    f"asked {asked[tag]}")
                total += count
                requests += 1
                del expected[tag]
                if next_offset < size:
                    issue(tag)
                start += frame_size
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        self._check_drained(start, end)
        return LoadResult(requests, total, wall, cpu)

    def write(self, fid: int, size: int, depth: int) -> LoadResult:
        """Write `size` bytes to the open `fid` in msize chunks, `depth` writes in flight."""
        chunk = self.msize - c.IOHDRSZ
        data = os.urandom(chunk)
        # One whole frame per slot, patched in place: a slot's frame is sent
        # before its reply can arrive, so it is never changed while in use.
        frames = [bytearray(codec.encode(0, m.Twrite(fid=fid, offset=0, data=data)))
                  for _ in range(depth)]
        rwrite = c.TWRITE + 1
        expected: dict[int, int] = {}
        asked: dict[int, int] = {}
        next_offset = 0
        total = requests = 0

        def issue(slot: int) -> None:
            nonlocal next_offset
            frame = frames[slot]
            count = min(chunk, size - next_offset)
            HEADER.pack_into(frame, 0, 23 + count, c.TWRITE, slot)
            U64.pack_into(frame, 11, next_offset)
            U32.pack_into(frame, 19, count)
            expected[slot] = rwrite
            asked[slot] = count
            next_offset += count
            self.sock.sendall(memoryview(frame)[: 23 + count])

        start = end = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        slot = 0
        while slot < depth and next_offset < size:
            issue(slot)
            slot += 1
        while expected:
            start, end = self._receive(start, end)
            while True:
                frame_size, _, tag = self._frame(start, end, expected)
                if not frame_size:
                    break
                (count,) = U32.unpack_from(self._buffer, start + 7)
                if frame_size != RWRITE_SIZE or count != asked[tag]:
                    raise LoadError(f"Rwrite of {count} bytes, asked {asked[tag]}")
                total += count
                requests += 1
                del expected[tag]
                start += frame_size
                if next_offset < size:
                    issue(tag)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        self._check_drained(start, end)
        return LoadResult(requests, total, wall, cpu)
