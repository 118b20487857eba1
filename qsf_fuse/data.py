"""File data: open, create, read, write, fsync and release of regular files.

File data in the page cache is kept across opens only while qid.version, mtime
and size are unchanged, and a file whose qid.version is 0 (a server that does
not version its files, such as diod) is read and written without the page
cache (direct_io) unless `ignoreqv` is set.

With writeback caching (`writeback`), the kernel answers write(2) from its page
cache and sends the data later (on fsync, close, memory pressure or after
dirty_expire): it may then read the pages around a partial write, so write-only
opens are made read-write where the server allows it, and it places appends at
its own end of file, so O_APPEND is not sent. A write that fails then is kept by
the kernel as the file's error and returned by the next fsync(2) or close(2).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

import pyfuse3
import trio

from qsf_p9 import constants as c
from qsf_p9 import messages as m

from . import convert
from .client import BadReply, P9Error
from .core import Core
from .inodes import Node


@dataclass(eq=False)
class OpenFile:
    fid: int
    node: Node
    iounit: int
    append: bool


class Files:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._client = core.client
        self._nodes = core.nodes
        self._options = core.options
        self._nursery = core.nursery

    def _file_info(
        self, fh: int, node: Node, version: int, attrs: pyfuse3.EntryAttributes, fresh: bool
    ) -> pyfuse3.FileInfo:
        key = convert.cache_key(version, attrs)
        unversioned = version == 0 and not self._options.ignoreqv
        keep = not fresh and not unversioned and key == node.open_key
        node.open_key = key
        return pyfuse3.FileInfo(fh=fh, direct_io=unversioned, keep_cache=keep)

    def _wire_flags(self, flags: int) -> int:
        wire_flags = convert.open_flags(flags)
        if self._options.writeback:
            wire_flags &= ~c.L_O_APPEND
            if wire_flags & os.O_ACCMODE == c.L_O_WRONLY:
                wire_flags = wire_flags & ~os.O_ACCMODE | c.L_O_RDWR
        return wire_flags

    async def _lopen(self, fid: int, wire_flags: int, flags: int) -> m.Rlopen:
        try:
            return await self._client.call(m.Tlopen(fid, wire_flags), m.Rlopen)
        except P9Error as error:
            asked = flags & os.O_ACCMODE
            if error.errno != errno.EACCES or wire_flags & os.O_ACCMODE == asked:
                raise
        # Write-only by permission: the kernel cannot fill partial pages from it
        # (such a write fails with EIO), whole-page writes still work.
        return await self._client.call(
            m.Tlopen(fid, wire_flags & ~os.O_ACCMODE | c.L_O_WRONLY), m.Rlopen
        )

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._nodes.get(inode)
        wire_flags = self._wire_flags(flags)
        fid = await self._core.clone(node)
        try:
            opened = await self._lopen(fid, wire_flags, flags)
            reply = await self._core.getattr_fid(fid)
            attrs = self._core.entry(node, reply)
        except BaseException:
            self._core.release_fid(fid)
            raise
        fh = self._core.new_fh()
        self._core.files[fh] = OpenFile(
            fid, node, self._core.iounit(opened.iounit), bool(wire_flags & c.L_O_APPEND)
        )
        return self._file_info(fh, node, reply.qid.version, attrs, fresh=False)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._nodes.get(parent_inode)
        name = convert.check_name(name)
        wire_flags = self._wire_flags(flags) | c.L_O_CREAT
        if flags & os.O_EXCL:
            wire_flags |= c.L_O_EXCL
        fid = await self._core.clone_for_create(parent)
        try:
            # The Tgetattr goes right behind the Tlcreate (one round trip): the fid is
            # the new file once Tlcreate succeeded, and its answer is ignored otherwise.
            lcreate = m.Tlcreate(fid, name, wire_flags, stat.S_IMODE(mode), ctx.gid)
            with self._core.own_change(("in", parent.key[0], name)):
                created_or_error, reply_or_error = await self._client.call_chain(
                    [lcreate, m.Tgetattr(fid, c.GETATTR_BASIC)]
                )
                if isinstance(created_or_error, P9Error):
                    raise created_or_error
            assert isinstance(created_or_error, m.Rlcreate)
            created = created_or_error
            if (isinstance(reply_or_error, m.Rgetattr)
                    and reply_or_error.qid.path == created.qid.path):
                reply = reply_or_error
            else:
                # A server that ran the getattr first (diod's threads): ask again.
                reply = await self._core.getattr_fid(fid)
            if reply.qid.path != created.qid.path or not stat.S_ISREG(reply.mode):
                raise BadReply("Tlcreate made something else than a regular file")
        except BaseException:
            self._core.release_fid(fid)
            raise
        # The node gets a fid of its own (a walk) only when it needs one.
        node = self._nodes.remember(created.qid, None, parent, name)
        try:
            attrs = self._core.entry(node, reply)
        except BaseException:
            self._nodes.forget(node.inode, 1)
            self._core.release_fid(fid)
            raise
        fh = self._core.new_fh()
        self._core.files[fh] = OpenFile(
            fid, node, self._core.iounit(created.iounit), bool(wire_flags & c.L_O_APPEND)
        )
        return self._file_info(fh, node, created.qid.version, attrs, fresh=True), attrs

    async def read(self, fh: int, off: int, size: int) -> bytes:
        file = self._core.files[fh]
        if size <= file.iounit:
            reply = await self._client.call(m.Tread(file.fid, off, size), m.Rread)
            return bytes(reply.data)
        # Larger than one message: ask for every piece at once, keep up to the first short one.
        pieces: list[bytes] = []
        offsets = list(range(off, off + size, file.iounit))
        results: dict[int, bytes] = {}

        async def read_piece(offset: int) -> None:
            count = min(file.iounit, off + size - offset)
            reply = await self._client.call(m.Tread(file.fid, offset, count), m.Rread)
            results[offset] = bytes(reply.data)

        async with trio.open_nursery() as nursery:
            for offset in offsets:
                nursery.start_soon(read_piece, offset)
        for offset in offsets:
            piece = results[offset]
            pieces.append(piece)
            if len(piece) < min(file.iounit, off + size - offset):
                break
        return b"".join(pieces)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        file = self._core.files[fh]
        data = memoryview(buf)
        if len(data) <= file.iounit:
            return await self._write_piece(file, off, data)
        if file.append:
            # Appends land in order at the server's end of file: one at a time.
            written = 0
            for start in range(0, len(data), file.iounit):
                piece = data[start : start + file.iounit]
                count = await self._write_piece(file, off + start, piece)
                written += count
                if count < len(piece):
                    break
            return written
        counts: dict[int, int] = {}

        async def write_piece(start: int) -> None:
            piece = data[start : start + file.iounit]
            counts[start] = await self._write_piece(file, off + start, piece)

        async with trio.open_nursery() as nursery:
            for start in range(0, len(data), file.iounit):
                nursery.start_soon(write_piece, start)
        written = 0
        for start in range(0, len(data), file.iounit):
            written += counts[start]
            if counts[start] < len(data[start : start + file.iounit]):
                break
        return written

    async def _write_piece(self, file: OpenFile, offset: int, piece: memoryview) -> int:
        reply = await self._client.call(m.Twrite(file.fid, offset, piece), m.Rwrite)
        if reply.count == 0 and len(piece) > 0:
            raise P9Error(errno.EIO, "the server wrote nothing")
        attrs = file.node.attrs
        if attrs is not None and not file.append:
            # What the kernel now believes too; kept for a server that cannot stat it later.
            attrs.st_size = max(attrs.st_size, offset + reply.count)
        return reply.count

    async def flush(self, fh: int) -> None:
        # Writes are not buffered here, and locks are local: nothing to send.
        return None

    async def release(self, fh: int) -> None:
        file = self._core.files.pop(fh, None)
        if file is not None:
            self._core.release_fid(file.fid)

    async def fsync(self, fh: int, datasync: bool) -> None:
        file = self._core.files[fh]
        await self._client.call(m.Tfsync(file.fid, int(datasync)), m.Rfsync)
