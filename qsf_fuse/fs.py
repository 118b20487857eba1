"""The pyfuse3 file system: every kernel request becomes 9P2000.L calls.

Errors become FUSEError at one boundary (`_boundary`): a server's Rlerror errno
passes through, anything unexpected becomes EIO plus a log line, so that no
handler can kill the mount.

Coherence with a server that changes files under us: entries and attributes
live `cache_timeout` seconds in the kernel (1 s by default); file data in the
page cache is kept across opens only while qid.version, mtime and size are
unchanged, and a file whose qid.version is 0 (a server that does not version
its files, such as diod) is read and written without the page cache
(direct_io) unless `ignoreqv` is set. Locks are not sent to the server:
pyfuse3 has no lock handlers, so POSIX and flock locks are local to this client.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, ParamSpec, TypeVar

import pyfuse3
import trio

from qsf_p9 import constants as c
from qsf_p9 import messages as m

from . import convert
from .client import XATTR_SIZE_MAX, BadReply, P9Client, P9Error
from .inodes import DEFAULT_MAX_FIDS, InodeMap, Node, UnknownInode, key_of

log = logging.getLogger(__name__)

# Readdirplus entries resolved (walk + getattr) concurrently.
READDIR_BATCH: Final = 32
# An extended attribute asked of a listed file (`ls -l`) is asked of this many of
# the files listed after it at once, in the background.
XATTR_READ_AHEAD: Final = 64
# A directory listing longer than this is cut (a server could list forever).
MAX_DIR_ENTRIES: Final = 1_000_000
MIN_IOUNIT: Final = 4096

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class FsOptions:
    cache_timeout: float = 1.0  # kernel entry and attribute cache, seconds
    ignoreqv: bool = False  # use the page cache even when qid.version is 0
    max_fids: int = DEFAULT_MAX_FIDS  # fids kept by known inodes (beyond: walk again)


def _boundary(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Convert every error of a handler to FUSEError, the only one pyfuse3 accepts."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as error:
            raise pyfuse3.FUSEError(_errno_of(handler.__name__, error)) from None

    return wrapper


def _errno_of(where: str, error: Exception) -> int:
    """The errno for the kernel: a call's own errno, else EIO and a log line."""
    if isinstance(error, ExceptionGroup):
        # Concurrent calls failed: the first one's errno speaks for them.
        leaves = error.exceptions
        return _errno_of(where, leaves[0]) if leaves else errno.EIO
    if isinstance(error, P9Error | pyfuse3.FUSEError):
        # The kernel refuses an error reply outside 1..511 (the request would hang).
        return error.errno if 0 < error.errno < 512 else errno.EIO
    if isinstance(error, UnknownInode):
        log.warning("%s: unknown inode %s", where, error)
        return errno.ESTALE
    log.error("%s failed", where, exc_info=error)
    return errno.EIO


@dataclass(eq=False)
class OpenFile:
    fid: int
    node: Node
    iounit: int
    append: bool


@dataclass(eq=False)
class OpenDir:
    fid: int
    node: Node
    # Entries fetched so far, in server order: position i has next_id i + 1.
    entries: list[tuple[bytes, m.Qid]] = field(default_factory=list)
    cookie: int = 0  # the 9P offset to continue from
    eof: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)
    # Entries resolved but not yet taken by the kernel, by position; each holds
    # one lookup (None: the name vanished).
    ready: dict[int, tuple[bytes, pyfuse3.EntryAttributes] | None] = field(
        default_factory=dict
    )
    # The nodes handed to the kernel, in listing order (for the xattr read-ahead).
    listed: list[Node] = field(default_factory=list)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(
        self,
        client: P9Client,
        root_fid: int,
        root_qid: m.Qid,
        nursery: trio.Nursery,
        options: FsOptions | None = None,
    ) -> None:
        super().__init__()
        self._client = client
        self._nursery = nursery
        self._options = options or FsOptions()
        self._nodes = InodeMap(
            root_fid, root_qid, self._release_fid, self._options.max_fids
        )
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, OpenDir] = {}
        self._next_fh = 1
        # Messages the server answered EOPNOTSUPP to: their fallbacks are used directly.
        self._unsupported: set[type[m.Message]] = set()
        # Extended attribute names a read-ahead found on a file: not read ahead again.
        self._xattrs_present: set[bytes] = set()

    # -- helpers -----------------------------------------------------------

    @property
    def nodes(self) -> InodeMap:
        return self._nodes

    def _release_fid(self, fid: int) -> None:
        """Clunk fid in the background (called when the inode map lets go of it)."""
        self._nursery.start_soon(self._clunk_quietly, fid)

    async def _clunk_quietly(self, fid: int) -> None:
        try:
            await self._client.clunk(fid)
        except P9Error as error:
            if not self._client.dead:
                log.debug("clunk of fid %d: %s", fid, error)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    @property
    def _io_max(self) -> int:
        return self._client.msize - c.IOHDRSZ

    def _iounit(self, iounit: int) -> int:
        # A hint only: a tiny one (a server asking for a flood of requests) is ignored.
        return min(iounit, self._io_max) if iounit >= MIN_IOUNIT else self._io_max

    async def _getattr_fid(self, fid: int) -> m.Rgetattr:
        return await self._client.call(m.Tgetattr(fid, c.GETATTR_BASIC), m.Rgetattr)

    def _entry(self, node: Node, reply: m.Rgetattr) -> pyfuse3.EntryAttributes:
        """The kernel's view of node from a fresh Rgetattr (also cached on node)."""
        if stat.S_ISDIR(reply.mode) != node.key[1]:
            raise BadReply("a qid and the mode of its file disagree on being a directory")
        attrs = convert.entry_attributes(reply, node.inode, self._options.cache_timeout)
        node.attrs = attrs
        node.attrs_expiry = trio.current_time() + self._options.cache_timeout
        self._note_version(node, reply)
        return attrs

    def _note_version(self, node: Node, reply: m.Rgetattr) -> None:
        """Drop node's cached data if the server changed it while only its version tells."""
        if node.open_key is None:
            return
        key = convert.cache_key(reply.qid.version, node.attrs)
        if key != node.open_key and key[1:] == node.open_key[1:]:
            # mtime and size unchanged: the kernel would not notice by itself.
            node.open_key = None
            self._nursery.start_soon(self._invalidate, node.inode)

    async def _invalidate(self, inode: int) -> None:
        try:
            # May wait for page locks held by a read we are serving: not in a handler.
            # Abandoned at exit: a kernel that never lets it return must not keep us.
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode, False,
                                          abandon_on_cancel=True)
        except OSError as error:
            if error.errno != errno.ENOENT:
                log.warning("invalidate inode %d: %s", inode, error)

    async def _walk_entry(self, parent: Node, name: bytes) -> pyfuse3.EntryAttributes:
        """Look name up in parent: one more kernel lookup of its node."""
        async with self._use(parent) as parent_fid:
            fid, qid = await self._client.walk(parent_fid, [name])
        assert qid is not None
        try:
            reply = await self._getattr_fid(fid)
            if reply.qid.path != qid.path:
                raise BadReply("Rgetattr names another file than Rwalk")
        except BaseException:
            self._release_fid(fid)
            raise
        node = self._nodes.remember(qid, fid, parent, name)
        try:
            return self._entry(node, reply)
        except BaseException:
            self._nodes.forget(node.inode, 1)
            raise

    @asynccontextmanager
    async def _use(self, node: Node) -> AsyncIterator[int]:
        """node's fid for the block, walked again first if it was evicted."""
        if node.ref is None and node is not self._nodes.root and node.inode not in self._nodes:
            # A forgotten directory on the way to a file still known: a fid for now only.
            fid = await self._walk_again(node)
            try:
                yield fid
            finally:
                self._release_fid(fid)
            return
        if node.ref is None:
            self._nodes.attach_fid(node, await self._walk_again(node))
        with self._nodes.hold(node) as fid:
            yield fid

    async def _walk_again(self, node: Node) -> int:
        """A new fid for node, walked by its last known name in its parent."""
        parent = node.parent
        if parent is None:
            raise P9Error(errno.ESTALE)
        async with self._use(parent) as parent_fid:
            fid, qid = await self._client.walk(parent_fid, [node.name])
        assert qid is not None
        if key_of(qid) != node.key:
            self._release_fid(fid)
            raise P9Error(errno.ESTALE, "the file was replaced since it was looked up")
        return fid

    async def _clone_for_create(self, node: Node) -> int:
        """A clone of a directory's fid, from the spare one kept ready if there is one.

        Tlcreate turns the fid it is given into the new file, so every create
        needs a clone of the directory's fid first: making the next one in the
        background saves a round trip on the following create.
        """
        fid = self._nodes.take_spare(node)
        if fid is None:
            fid = await self._clone(node)
        self._nursery.start_soon(self._make_spare, node)
        return fid

    async def _make_spare(self, node: Node) -> None:
        if node.spare is not None or node.ref is None:
            return
        ref = node.ref
        try:
            fid = await self._clone(node)
        except (P9Error, UnknownInode):
            return
        if node.ref is not ref:  # replaced or evicted meanwhile: a clone of the old one
            self._release_fid(fid)
            return
        self._nodes.set_spare(node, fid)

    async def _clone(self, node: Node) -> int:
        """A new fid for node's file, to open or to turn into something else."""
        async with self._use(node) as fid:
            newfid, _ = await self._client.walk(fid, [])
        return newfid

    # -- names -------------------------------------------------------------

    @_boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._nodes.get(parent_inode)
        return await self._walk_entry(parent, convert.check_name(name))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            try:
                self._nodes.forget(inode, count)
            except Exception:  # forget must never raise
                log.exception("forget of inode %d", inode)

    @_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._nodes.get(inode)
        try:
            async with self._use(node) as fid:
                reply = await self._getattr_fid(fid)
            if reply.qid.path == node.key[0]:
                return self._entry(node, reply)
        except P9Error as error:
            if error.errno != errno.ENOENT:
                raise
        # A path-based server (diod) answers for whatever file now has the name
        # this fid was walked by, or for none once it is unlinked: an open file
        # keeps its last known attributes then.
        is_open = any(file.node is node for file in self._files.values())
        if node.attrs is None or not is_open:
            raise P9Error(errno.ESTALE if node.attrs is not None else errno.ENOENT)
        attrs: pyfuse3.EntryAttributes = node.attrs
        return attrs

    @_boundary
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._nodes.get(inode)
        if fh is not None and fh in self._files:
            # ftruncate/fchmod/futimens: the open file, even if unlinked since.
            fid = self._files[fh].fid
            await self._client.call(convert.setattr_message(fid, attr, fields), m.Rsetattr)
        else:
            async with self._use(node) as fid:
                await self._client.call(convert.setattr_message(fid, attr, fields), m.Rsetattr)
        if node.attrs is None:
            async with self._use(node) as fid:
                return self._entry(node, await self._getattr_fid(fid))
        # What the server now has, as far as the client knows; valid for no time,
        # so the kernel asks the server (getattr) if anything looks at it.
        attrs = convert.after_setattr(node.attrs, attr, fields)
        node.attrs = attrs
        return attrs

    @_boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._nodes.get(inode)
        async with self._use(node) as fid:
            reply = await self._client.call(m.Treadlink(fid), m.Rreadlink)
        return reply.target

    @_boundary
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._nodes.get(parent_inode)
        name = convert.check_name(name)
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFREG:
            fid = await self._clone(parent)
            try:
                flags = c.L_O_WRONLY | c.L_O_CREAT | c.L_O_EXCL
                await self._client.call(
                    m.Tlcreate(fid, name, flags, stat.S_IMODE(mode), ctx.gid), m.Rlcreate
                )
            finally:
                await self._clunk_quietly(fid)
        elif kind in (stat.S_IFIFO, stat.S_IFSOCK):
            async with self._use(parent) as dfid:
                await self._client.call(m.Tmknod(dfid, name, mode, 0, 0, ctx.gid), m.Rmknod)
        else:
            raise P9Error(errno.EPERM, "device nodes are not created on shared folders")
        return await self._walk_entry(parent, name)

    @_boundary
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._nodes.get(parent_inode)
        name = convert.check_name(name)
        async with self._use(parent) as dfid:
            await self._client.call(
                m.Tmkdir(dfid, name, stat.S_IMODE(mode), ctx.gid), m.Rmkdir
            )
        return await self._walk_entry(parent, name)

    @_boundary
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._nodes.get(parent_inode)
        name = convert.check_name(name)
        async with self._use(parent) as dfid:
            await self._client.call(m.Tsymlink(dfid, name, target, ctx.gid), m.Rsymlink)
        return await self._walk_entry(parent, name)

    @_boundary
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self._nodes.get(inode)
        parent = self._nodes.get(new_parent_inode)
        new_name = convert.check_name(new_name)
        async with self._use(parent) as dfid, self._use(node) as fid:
            await self._client.call(m.Tlink(dfid, fid, new_name), m.Rlink)
        # The new name is a lookup of the same file.
        return await self._walk_entry(parent, new_name)

    @_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._unlinkat(parent_inode, name, 0)

    @_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._unlinkat(parent_inode, name, c.AT_REMOVEDIR)

    async def _unlinkat(self, parent_inode: int, name: bytes, flags: int) -> None:
        parent = self._nodes.get(parent_inode)
        name = convert.check_name(name)
        async with self._use(parent) as dfid:
            if m.Tunlinkat not in self._unsupported:
                try:
                    await self._client.call(m.Tunlinkat(dfid, name, flags), m.Runlinkat)
                    return
                except P9Error as error:
                    if error.errno != errno.EOPNOTSUPP:
                        raise
                    self._unsupported.add(m.Tunlinkat)
            # A server without Tunlinkat (diod): walk to the file and Tremove it.
            fid, qid = await self._client.walk(dfid, [name])
        assert qid is not None
        is_dir = bool(qid.type & c.QTDIR)
        if is_dir != bool(flags & c.AT_REMOVEDIR):
            self._release_fid(fid)
            raise P9Error(errno.EISDIR if is_dir else errno.ENOTDIR)
        await self._client.remove(fid)

    @_boundary
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags:
            # RENAME_NOREPLACE / RENAME_EXCHANGE cannot be done atomically in 9P.
            raise P9Error(errno.EINVAL)
        old_parent = self._nodes.get(parent_inode_old)
        new_parent = self._nodes.get(parent_inode_new)
        name_old = convert.check_name(name_old)
        name_new = convert.check_name(name_new)
        async with self._use(old_parent) as old_dfid, self._use(new_parent) as new_dfid:
            try:
                await self._client.call(
                    m.Trenameat(old_dfid, name_old, new_dfid, name_new), m.Rrenameat
                )
            except P9Error as error:
                if error.errno != errno.EOPNOTSUPP:
                    raise
                fid, _ = await self._client.walk(old_dfid, [name_old])
                try:
                    await self._client.call(m.Trename(fid, new_dfid, name_new), m.Rrename)
                finally:
                    self._release_fid(fid)
        await self._refresh_moved(new_parent, name_new)

    async def _refresh_moved(self, parent: Node, name: bytes) -> None:
        """Give a renamed file's node a fid walked by its new name.

        A path-based server (diod) keeps answering for the old path on the
        old fid; a fid-based one loses nothing by this.
        """
        try:
            async with self._use(parent) as dfid:
                fid, qid = await self._client.walk(dfid, [name])
        except P9Error:
            return
        assert qid is not None
        node = self._nodes.find(qid)
        if node is None:
            self._release_fid(fid)
        else:
            self._nodes.replace_fid(node, fid, parent, name)

    # -- files -------------------------------------------------------------

    def _file_info(
        self, fh: int, node: Node, version: int, attrs: pyfuse3.EntryAttributes, fresh: bool
    ) -> pyfuse3.FileInfo:
        key = convert.cache_key(version, attrs)
        unversioned = version == 0 and not self._options.ignoreqv
        keep = not fresh and not unversioned and key == node.open_key
        node.open_key = key
        return pyfuse3.FileInfo(fh=fh, direct_io=unversioned, keep_cache=keep)

    @_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._nodes.get(inode)
        wire_flags = convert.open_flags(flags)
        fid = await self._clone(node)
        try:
            opened = await self._client.call(m.Tlopen(fid, wire_flags), m.Rlopen)
            reply = await self._getattr_fid(fid)
            attrs = self._entry(node, reply)
        except BaseException:
            self._release_fid(fid)
            raise
        fh = self._new_fh()
        self._files[fh] = OpenFile(
            fid, node, self._iounit(opened.iounit), bool(wire_flags & c.L_O_APPEND)
        )
        return self._file_info(fh, node, reply.qid.version, attrs, fresh=False)

    @_boundary
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._nodes.get(parent_inode)
        name = convert.check_name(name)
        wire_flags = convert.open_flags(flags) | c.L_O_CREAT
        if flags & os.O_EXCL:
            wire_flags |= c.L_O_EXCL
        fid = await self._clone_for_create(parent)
        try:
            # The Tgetattr goes right behind the Tlcreate (one round trip): the fid is
            # the new file once Tlcreate succeeded, and its answer is ignored otherwise.
            lcreate = m.Tlcreate(fid, name, wire_flags, stat.S_IMODE(mode), ctx.gid)
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
                reply = await self._getattr_fid(fid)
            if reply.qid.path != created.qid.path or not stat.S_ISREG(reply.mode):
                raise BadReply("Tlcreate made something else than a regular file")
        except BaseException:
            self._release_fid(fid)
            raise
        # The node gets a fid of its own (a walk) only when it needs one.
        node = self._nodes.remember(created.qid, None, parent, name)
        try:
            attrs = self._entry(node, reply)
        except BaseException:
            self._nodes.forget(node.inode, 1)
            self._release_fid(fid)
            raise
        fh = self._new_fh()
        self._files[fh] = OpenFile(
            fid, node, self._iounit(created.iounit), bool(wire_flags & c.L_O_APPEND)
        )
        return self._file_info(fh, node, created.qid.version, attrs, fresh=True), attrs

    @_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        file = self._files[fh]
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

    @_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        file = self._files[fh]
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

    @_boundary
    async def flush(self, fh: int) -> None:
        # Writes are not buffered here, and locks are local: nothing to send.
        return None

    @_boundary
    async def release(self, fh: int) -> None:
        file = self._files.pop(fh, None)
        if file is not None:
            self._release_fid(file.fid)

    @_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        file = self._files[fh]
        await self._client.call(m.Tfsync(file.fid, int(datasync)), m.Rfsync)

    # -- directories -------------------------------------------------------

    @_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._nodes.get(inode)
        fid = await self._clone(node)
        try:
            await self._client.call(
                m.Tlopen(fid, c.L_O_RDONLY | c.L_O_DIRECTORY), m.Rlopen
            )
        except BaseException:
            self._release_fid(fid)
            raise
        fh = self._new_fh()
        self._dirs[fh] = OpenDir(fid, node)
        return fh

    @_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        directory = self._dirs[fh]
        async with directory.lock:
            if start_id == 0 and (directory.entries or directory.eof):
                # Rewind: list afresh.
                self._drop_ready(directory)
                directory.entries.clear()
                directory.cookie = 0
                directory.eof = False
                directory.listed = []
            position = start_id
            while True:
                while position >= len(directory.entries) and not directory.eof:
                    await self._fetch(directory)
                batch = directory.entries[position : position + READDIR_BATCH]
                if not batch:
                    return
                todo = [index for index in range(len(batch))
                        if position + index not in directory.ready]
                resolved = await self._resolve(directory.node, [batch[i] for i in todo])
                for index, item in zip(todo, resolved, strict=True):
                    directory.ready[position + index] = item
                for index in range(len(batch)):
                    item = directory.ready.pop(position + index)
                    if item is None:  # vanished since it was listed
                        continue
                    name, attrs = item
                    if not pyfuse3.readdir_reply(token, name, attrs, position + index + 1):
                        # The kernel's buffer is full: keep it for the next call.
                        directory.ready[position + index] = item
                        return
                    if name not in (b".", b".."):
                        self._note_listed(directory, attrs.st_ino)
                position += len(batch)

    def _note_listed(self, directory: OpenDir, inode: int) -> None:
        """Remember where inode's node came in its directory's listing."""
        if inode not in self._nodes:
            return
        node = self._nodes.get(inode)
        node.extra["listing"] = (directory.listed, len(directory.listed))
        directory.listed.append(node)

    def _drop_ready(self, directory: OpenDir) -> None:
        """Give back the lookups of entries resolved but never sent."""
        for item in directory.ready.values():
            if item is not None and item[0] not in (b".", b".."):
                self._nodes.forget(item[1].st_ino, 1)
        directory.ready.clear()

    async def _fetch(self, directory: OpenDir) -> None:
        count = self._client.msize - c.READDIRHDRSZ
        reply = await self._client.call(
            m.Treaddir(directory.fid, directory.cookie, count), m.Rreaddir
        )
        if not reply.entries:
            directory.eof = True
            return
        for entry in reply.entries:
            if convert.valid_entry_name(entry.name) or entry.name in (b".", b".."):
                directory.entries.append((entry.name, entry.qid))
            else:
                log.warning("skipping a directory entry with an invalid name %r", entry.name)
        directory.cookie = reply.entries[-1].offset
        if len(directory.entries) > MAX_DIR_ENTRIES:
            log.warning("directory listing cut at %d entries", MAX_DIR_ENTRIES)
            directory.eof = True

    async def _resolve(
        self, parent: Node, batch: list[tuple[bytes, m.Qid]]
    ) -> list[tuple[bytes, pyfuse3.EntryAttributes] | None]:
        """Attributes for each listed name, each counted as one lookup (None if gone)."""
        results: list[tuple[bytes, pyfuse3.EntryAttributes] | None] = [None] * len(batch)

        def dot(name: bytes, qid: m.Qid) -> pyfuse3.EntryAttributes:
            # "." and "..": the kernel takes no lookup for them, only the inode number.
            node = parent if name == b"." else self._nodes.find(qid)
            attrs = pyfuse3.EntryAttributes()
            attrs.st_ino = (node or parent).inode
            attrs.st_mode = stat.S_IFDIR
            return attrs

        async def resolve(index: int, name: bytes, qid: m.Qid) -> None:
            try:
                node = self._nodes.find(qid)
                if node is not None:
                    results[index] = (name, await self._refresh_known(node))
                    return
            except (P9Error, UnknownInode):
                pass  # stale: walk by name
            try:
                results[index] = (name, await self._walk_entry(parent, name))
            except P9Error as error:
                if error.errno not in (errno.ENOENT, errno.ESTALE):
                    raise

        try:
            async with trio.open_nursery() as nursery:
                for index, (name, qid) in enumerate(batch):
                    if name in (b".", b".."):
                        results[index] = (name, dot(name, qid))
                    else:
                        nursery.start_soon(resolve, index, name, qid)
        except BaseException:
            for result in results:
                if result is not None and result[0] not in (b".", b".."):
                    self._nodes.forget(result[1].st_ino, 1)
            raise
        return results

    async def _refresh_known(self, node: Node) -> pyfuse3.EntryAttributes:
        """Fresh attributes of a node already known, as one more lookup of it.

        One Tgetattr on its fid instead of a walk; P9Error if that fid no
        longer names the same file (a path-based server after a rename).
        """
        async with self._use(node) as fid:
            reply = await self._getattr_fid(fid)
        if reply.qid.path != node.key[0]:
            raise P9Error(errno.ESTALE)
        attrs = self._entry(node, reply)
        self._nodes.add_lookup(node)
        return attrs

    @_boundary
    async def releasedir(self, fh: int) -> None:
        directory = self._dirs.pop(fh, None)
        if directory is not None:
            self._drop_ready(directory)
            await self._clunk_quietly(directory.fid)

    @_boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        directory = self._dirs[fh]
        try:
            await self._client.call(m.Tfsync(directory.fid, int(datasync)), m.Rfsync)
        except P9Error as error:
            if error.errno not in (errno.EINVAL, errno.EBADF):
                raise

    # -- file system -------------------------------------------------------

    @_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        async with self._use(self._nodes.root) as fid:
            reply = await self._client.call(m.Tstatfs(fid), m.Rstatfs)
        return convert.statvfs(reply)

    @_boundary
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        node = self._nodes.get(inode)
        async with self._use(node) as fid:
            attrs = self._entry(node, await self._getattr_fid(fid))
        if ctx.uid == 0:
            return not mode & os.X_OK or bool(attrs.st_mode & 0o111) or stat.S_ISDIR(attrs.st_mode)
        if ctx.uid == attrs.st_uid:
            granted = (attrs.st_mode >> 6) & 7
        elif ctx.gid == attrs.st_gid or attrs.st_gid in pyfuse3.get_sup_groups(ctx.pid):
            granted = (attrs.st_mode >> 3) & 7
        else:
            granted = attrs.st_mode & 7
        return mode & granted == mode

    # -- extended attributes -----------------------------------------------

    async def _read_xattr(self, node: Node, name: bytes) -> bytes:
        async with self._use(node) as fid:
            xfid, size = await self._client.xattrwalk(fid, name)
        try:
            data = bytearray()
            while len(data) < size:
                count = min(size - len(data), self._io_max)
                reply = await self._client.call(m.Tread(xfid, len(data), count), m.Rread)
                if not reply.data:
                    raise BadReply("extended attribute shorter than announced")
                data += reply.data
            return bytes(data)
        finally:
            self._release_fid(xfid)

    @_boundary
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._nodes.get(inode)
        if not name or b"\0" in name:
            raise P9Error(errno.EINVAL)
        pending: dict[bytes, trio.Event] = node.extra.get("xattr_pending", {})
        if name in pending:  # asked already by the read-ahead
            await pending[name].wait()
        if self._known_absent(node, name):
            raise P9Error(errno.ENODATA)
        self._read_ahead_xattr(node, name)
        return await self._fetch_xattr(node, name)

    # "No such attribute" is remembered as long as attributes are (cache_timeout),
    # and forgotten on any setxattr/removexattr through this mount: `ls -l` asks
    # every file for security.selinux and system.posix_acl_access, one after the
    # other, and a server rarely has them.

    def _known_absent(self, node: Node, name: bytes) -> bool:
        absent: dict[bytes, float] = node.extra.get("absent_xattrs", {})
        return absent.get(name, 0.0) > trio.current_time()

    async def _fetch_xattr(self, node: Node, name: bytes) -> bytes:
        """The value from the server; its absence is remembered."""
        generation = node.extra.get("xattr_generation", 0)
        try:
            return await self._read_xattr(node, name)
        except P9Error as error:
            if error.errno == errno.ENODATA:
                self._note_absent(node, name, generation)
            raise

    def _note_absent(self, node: Node, name: bytes, generation: int) -> None:
        if self._options.cache_timeout <= 0 or node.extra.get("xattr_generation", 0) != generation:
            return  # written meanwhile: the answer may be old
        absent: dict[bytes, float] = node.extra.setdefault("absent_xattrs", {})
        if len(absent) > 64:
            absent.clear()
        absent[name] = trio.current_time() + self._options.cache_timeout

    def _read_ahead_xattr(self, node: Node, name: bytes) -> None:
        """Ask name of the files listed after node, in the background.

        A program that asks an attribute of one file of a listing (`ls -l`) asks
        it of the next ones too, one round trip at a time: asked together, the
        absent ones are answered from the cache. Only files holding a fid are
        asked (no walk), and only names found absent are remembered.
        """
        listing = node.extra.get("listing")
        if listing is None or self._options.cache_timeout <= 0 or name in self._xattrs_present:
            return
        listed, index = listing
        window: list[tuple[Node, trio.Event]] = []
        for sibling in listed[index + 1 : index + 1 + XATTR_READ_AHEAD]:
            if sibling.lookups <= 0 or sibling.ref is None or sibling.inode not in self._nodes:
                continue  # forgotten, or without a fid
            pending: dict[bytes, trio.Event] = sibling.extra.setdefault("xattr_pending", {})
            if name in pending or self._known_absent(sibling, name):
                continue
            pending[name] = trio.Event()
            window.append((sibling, pending[name]))
        if window:
            self._nursery.start_soon(self._prefetch_xattr, window, name)

    async def _prefetch_xattr(self, window: list[tuple[Node, trio.Event]], name: bytes) -> None:
        async def ask(node: Node, done: trio.Event) -> None:
            generation = node.extra.get("xattr_generation", 0)
            try:
                async with self._use(node) as fid:
                    xfid, _ = await self._client.xattrwalk(fid, name)
                # Present: the value is fetched when asked (only absence is cached);
                # read-ahead of this name is no use on this mount.
                self._release_fid(xfid)
                self._xattrs_present.add(name)
            except P9Error as error:
                if error.errno == errno.ENODATA:
                    self._note_absent(node, name, generation)
            except UnknownInode:
                pass
            finally:
                pending: dict[bytes, trio.Event] = node.extra.get("xattr_pending", {})
                if pending.get(name) is done:
                    del pending[name]
                done.set()

        async with trio.open_nursery() as nursery:
            for node, done in window:
                nursery.start_soon(ask, node, done)

    @_boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        node = self._nodes.get(inode)
        names = await self._read_xattr(node, b"")
        return [name for name in names.split(b"\0") if name]

    async def _write_xattr(self, node: Node, name: bytes, value: bytes, flags: int) -> None:
        if not name or b"\0" in name:
            raise P9Error(errno.EINVAL)
        if len(value) > XATTR_SIZE_MAX:
            raise P9Error(errno.E2BIG)
        node.extra.pop("absent_xattrs", None)
        node.extra["xattr_generation"] = node.extra.get("xattr_generation", 0) + 1
        fid = await self._clone(node)
        try:
            await self._client.call(
                m.Txattrcreate(fid, name, len(value), flags), m.Rxattrcreate
            )
            view = memoryview(value)
            offset = 0
            while offset < len(view):
                piece = view[offset : offset + self._io_max]
                reply = await self._client.call(m.Twrite(fid, offset, piece), m.Rwrite)
                if reply.count == 0:
                    raise P9Error(errno.EIO, "the server took no extended attribute bytes")
                offset += reply.count
        except BaseException:
            self._release_fid(fid)
            raise
        # The attribute is set when the fid is clunked: that answer is the result.
        try:
            await self._client.clunk(fid)
        finally:
            # An absence read while the write was under way is not kept either.
            node.extra.pop("absent_xattrs", None)
            node.extra["xattr_generation"] += 1

    @_boundary
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self._write_xattr(self._nodes.get(inode), name, value, 0)

    @_boundary
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._write_xattr(self._nodes.get(inode), name, b"", c.XATTR_REPLACE)

    # -- end ---------------------------------------------------------------

    async def clunk_all(self) -> None:
        """At unmount: give every fid back, so that the server ends with a clean table."""
        async with trio.open_nursery() as nursery:
            for fid in self.open_fids():
                nursery.start_soon(self._clunk_quietly, fid)
        self._files.clear()
        self._dirs.clear()

    def open_fids(self) -> list[int]:
        """Every fid this file system still holds."""
        return (
            self._nodes.all_fids()
            + [file.fid for file in self._files.values()]
            + [directory.fid for directory in self._dirs.values()]
        )
