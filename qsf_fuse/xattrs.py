"""Extended attributes: get, list, set and remove, and the absence cache.

"No such attribute" is remembered as long as attributes are (cache_timeout),
and forgotten on any setxattr/removexattr through this mount: `ls -l` asks
every file for security.selinux and system.posix_acl_access, one after the
other, and a server rarely has them. An attribute asked of one listed file is
asked of the XATTR_READ_AHEAD files listed after it at once, in the background.

The security.* and trusted.* namespaces belong to the server qube's kernel (its
SELinux labels, file capabilities, IMA hashes): on this mount they are not
supported, answered here without a request (EOPNOTSUPP) and left out of
listings. `ls -l` then asks security.selinux once per mount instead of once per
file (coreutils remembers a file system without it), and a write's check for
security.capability costs no round trip.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Final

import pyfuse3
import trio

from qsf_p9 import constants as c
from qsf_p9 import messages as m

from .client import XATTR_SIZE_MAX, BadReply, P9Error
from .core import Core
from .inodes import Node, UnknownInode

XATTR_READ_AHEAD: Final = 64
SERVER_ONLY_PREFIXES: Final = (b"security.", b"trusted.")


def check_name(name: bytes) -> None:
    """Refuse a name no file can have, and the server qube's own namespaces."""
    if not name or b"\0" in name:
        raise P9Error(errno.EINVAL)
    if name.startswith(SERVER_ONLY_PREFIXES):
        raise P9Error(errno.EOPNOTSUPP)


class Xattrs:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._client = core.client
        self._nodes = core.nodes
        self._options = core.options
        self._nursery = core.nursery
        # Extended attribute names a read-ahead found on a file: not read ahead again.
        self._xattrs_present: set[bytes] = set()

    async def read(self, node: Node, name: bytes) -> bytes:
        async with self._core.use(node) as fid:
            xfid, size = await self._client.xattrwalk(fid, name)
        try:
            data = bytearray()
            while len(data) < size:
                count = min(size - len(data), self._core.io_max)
                reply = await self._client.call(m.Tread(xfid, len(data), count), m.Rread)
                if not reply.data:
                    raise BadReply("extended attribute shorter than announced")
                data += reply.data
            return bytes(data)
        finally:
            self._core.release_fid(xfid)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._nodes.get(inode)
        check_name(name)
        pending: dict[bytes, trio.Event] = node.extra.get("xattr_pending", {})
        if name in pending:  # asked already by the read-ahead
            await pending[name].wait()
        if self._known_absent(node, name) or self._has_none(node):
            raise P9Error(errno.ENODATA)
        self._read_ahead(node, name)
        return await self._fetch(node, name)

    def _has_none(self, node: Node) -> bool:
        """Whether the file has no extended attributes at all, as a Tqsfreaddir
        listing said (kept while change events come: an ATTRIB event drops it)."""
        return self._core.live and bool(node.extra.get("no_xattrs"))

    def _known_absent(self, node: Node, name: bytes) -> bool:
        absent: dict[bytes, float] = node.extra.get("absent_xattrs", {})
        return absent.get(name, 0.0) > trio.current_time()

    async def _fetch(self, node: Node, name: bytes) -> bytes:
        """The value from the server; its absence is remembered."""
        generation = node.extra.get("xattr_generation", 0)
        try:
            return await self.read(node, name)
        except P9Error as error:
            if error.errno == errno.ENODATA:
                self._note_absent(node, name, generation)
            raise

    def _note_absent(self, node: Node, name: bytes, generation: int) -> None:
        if self._core.cache_timeout <= 0 or node.extra.get("xattr_generation", 0) != generation:
            return  # written meanwhile: the answer may be old
        absent: dict[bytes, float] = node.extra.setdefault("absent_xattrs", {})
        if len(absent) > 64:
            absent.clear()
        absent[name] = trio.current_time() + self._core.cache_timeout

    def _read_ahead(self, node: Node, name: bytes) -> None:
        """Ask name of the files listed after node, in the background.

        A program that asks an attribute of one file of a listing (`ls -l`) asks
        it of the next ones too, one round trip at a time: asked together, the
        absent ones are answered from the cache. Only files holding a fid are
        asked (no walk), and only names found absent are remembered.
        """
        listing = node.extra.get("listing")
        if listing is None or self._core.cache_timeout <= 0 or name in self._xattrs_present:
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
            self._nursery.start_soon(self._prefetch, window, name)

    async def _prefetch(self, window: list[tuple[Node, trio.Event]], name: bytes) -> None:
        async def ask(node: Node, done: trio.Event) -> None:
            generation = node.extra.get("xattr_generation", 0)
            try:
                async with self._core.use(node) as fid:
                    xfid, _ = await self._client.xattrwalk(fid, name)
                # Present: the value is fetched when asked (only absence is cached);
                # read-ahead of this name is no use on this mount.
                self._core.release_fid(xfid)
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

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        node = self._nodes.get(inode)
        if self._has_none(node):
            return []
        names = await self.read(node, b"")
        return [
            name for name in names.split(b"\0")
            if name and not name.startswith(SERVER_ONLY_PREFIXES)
        ]

    async def write(self, node: Node, name: bytes, value: bytes, flags: int) -> None:
        check_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise P9Error(errno.E2BIG)
        node.extra.pop("absent_xattrs", None)
        node.extra.pop("no_xattrs", None)
        node.extra["xattr_generation"] = node.extra.get("xattr_generation", 0) + 1
        fid = await self._core.clone(node)
        try:
            await self._client.call(
                m.Txattrcreate(fid, name, len(value), flags), m.Rxattrcreate
            )
            view = memoryview(value)
            offset = 0
            while offset < len(view):
                piece = view[offset : offset + self._core.io_max]
                reply = await self._client.call(m.Twrite(fid, offset, piece), m.Rwrite)
                if reply.count == 0:
                    raise P9Error(errno.EIO, "the server took no extended attribute bytes")
                offset += reply.count
        except BaseException:
            self._core.release_fid(fid)
            raise
        # The attribute is set when the fid is clunked: that answer is the result.
        try:
            await self._client.clunk(fid)
        finally:
            # An absence read while the write was under way is not kept either.
            node.extra.pop("absent_xattrs", None)
            node.extra["xattr_generation"] += 1

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.write(self._nodes.get(inode), name, value, 0)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.write(self._nodes.get(inode), name, b"", c.XATTR_REPLACE)
