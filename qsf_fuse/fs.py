"""The pyfuse3 file system: a thin dispatcher from kernel requests to the parts.

Each handler passes its request to the part that does it (names.py: lookup,
attributes and names; data.py: file data; dirs.py: directory listings;
xattrs.py: extended attributes), through `boundary`, which turns every error
into the FUSEError pyfuse3 accepts (core.py).

Coherence with a server that changes files under us: entries and attributes
live `cache_timeout` seconds in the kernel (1 s by default), or minutes while
a qsf server pushes change events (notify.py); file data is kept across opens
only while the file looks unchanged (data.py). Locks are not sent
to the server: pyfuse3 has no lock handlers, so POSIX and flock locks are
local to this client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pyfuse3
import trio

from qsf_p9 import constants as c
from qsf_p9 import messages as m

from .client import P9Client
from .core import Core, FsOptions, boundary
from .data import Files
from .dirs import Directories
from .inodes import InodeMap
from .names import Names
from .notify import Notifier
from .xattrs import Xattrs

__all__ = ["FsOptions", "Operations"]

log = logging.getLogger(__name__)


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
        self._core = Core(client, root_fid, root_qid, nursery, options or FsOptions())
        self._names = Names(self._core)
        self._files = Files(self._core)
        self._dirs = Directories(self._core)
        self._xattrs = Xattrs(self._core)
        self.notifier = Notifier(self._core)
        # With change events, the kernel may cache POSIX ACLs too (an ATTRIB event
        # invalidates the inode, and with it the cached ACLs): `ls -l` then asks
        # system.posix_acl_access once per file, not once per listing.
        self.enable_acl = client.qsf
        self.enable_writeback_cache = self._core.options.writeback

    @property
    def nodes(self) -> InodeMap:
        return self._core.nodes

    async def watch_changes(self) -> None:
        """Keep the kernel's caches long and push the server's change events to
        them, while the server sends them (a session with the qsf extensions)."""
        await self.notifier.run()

    # -- names -------------------------------------------------------------

    @boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return await self._names.lookup(parent_inode, name, ctx)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            try:
                self._core.nodes.forget(inode, count)
            except Exception:  # forget must never raise
                log.exception("forget of inode %d", inode)

    @boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._names.getattr(inode, ctx)

    @boundary
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        return await self._names.setattr(inode, attr, fields, fh, ctx)

    @boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self._names.readlink(inode, ctx)

    @boundary
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return await self._names.mknod(parent_inode, name, mode, rdev, ctx)

    @boundary
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return await self._names.mkdir(parent_inode, name, mode, ctx)

    @boundary
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return await self._names.symlink(parent_inode, name, target, ctx)

    @boundary
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return await self._names.link(inode, new_parent_inode, new_name, ctx)

    @boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._names.unlinkat(parent_inode, name, 0)

    @boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._names.unlinkat(parent_inode, name, c.AT_REMOVEDIR)

    @boundary
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        await self._names.rename(
            parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx
        )

    @boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        return await self._names.statfs(ctx)

    @boundary
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return await self._names.access(inode, mode, ctx)

    # -- files -------------------------------------------------------------

    @boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return await self._files.open(inode, flags, ctx)

    @boundary
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        return await self._files.create(parent_inode, name, mode, flags, ctx)

    @boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self._files.read(fh, off, size)

    @boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self._files.write(fh, off, buf)

    @boundary
    async def flush(self, fh: int) -> None:
        await self._files.flush(fh)

    @boundary
    async def release(self, fh: int) -> None:
        await self._files.release(fh)

    @boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._files.fsync(fh, datasync)

    # -- directories -------------------------------------------------------

    @boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return await self._dirs.opendir(inode, ctx)

    @boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        await self._dirs.readdir(fh, start_id, token)

    @boundary
    async def releasedir(self, fh: int) -> None:
        await self._dirs.releasedir(fh)

    @boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self._dirs.fsyncdir(fh, datasync)

    # -- extended attributes -----------------------------------------------

    @boundary
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self._xattrs.getxattr(inode, name, ctx)

    @boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return await self._xattrs.listxattr(inode, ctx)

    @boundary
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self._xattrs.setxattr(inode, name, value, ctx)

    @boundary
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._xattrs.removexattr(inode, name, ctx)

    # -- end ---------------------------------------------------------------

    async def clunk_all(self) -> None:
        """At unmount: give every fid back, so that the server ends with a clean table."""
        core = self._core
        async with trio.open_nursery() as nursery:
            for fid in self.open_fids():
                nursery.start_soon(core.clunk_quietly, fid)
        core.files.clear()
        core.dirs.clear()

    def open_fids(self) -> list[int]:
        """Every fid this file system still holds."""
        core = self._core
        return (
            core.nodes.all_fids()
            + [file.fid for file in core.files.values()]
            + [directory.fid for directory in core.dirs.values()]
        )
