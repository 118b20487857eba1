"""Names and attributes: lookup, getattr/setattr, creating, linking, renaming
and removing names, statfs and access."""

from __future__ import annotations

import errno
import logging
import os
import stat

import pyfuse3

from qsf_p9 import constants as c
from qsf_p9 import messages as m

from . import convert
from .client import P9Error
from .core import Core
from .inodes import Node

log = logging.getLogger(__name__)


class Names:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._client = core.client
        self._nodes = core.nodes
        self._options = core.options
        self._nursery = core.nursery

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._nodes.get(parent_inode)
        name = convert.check_name(name)
        try:
            return await self._core.walk_entry(parent, name)
        except P9Error as error:
            if error.errno == errno.ENOENT:
                # While change events come, the kernel may remember the absence
                # (a CREATED event for the name drops it).
                negative = self._core.negative_entry(parent, name)
                if negative is not None:
                    return negative
            raise

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._nodes.get(inode)
        try:
            async with self._core.use(node) as fid:
                reply = await self._core.getattr_fid(fid)
            if reply.qid.path == node.key[0]:
                return self._core.entry(node, reply)
        except P9Error as error:
            if error.errno != errno.ENOENT:
                raise
        # A path-based server (diod) answers for whatever file now has the name
        # this fid was walked by, or for none once it is unlinked: an open file
        # keeps its last known attributes then.
        is_open = any(file.node is node for file in self._core.files.values())
        if node.attrs is None or not is_open:
            raise P9Error(errno.ESTALE if node.attrs is not None else errno.ENOENT)
        attrs: pyfuse3.EntryAttributes = node.attrs
        return attrs

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._nodes.get(inode)
        try:
            if fh is not None and fh in self._core.files:
                # ftruncate/fchmod/futimens: the open file, even if unlinked since.
                fid = self._core.files[fh].fid
                await self._client.call(convert.setattr_message(fid, attr, fields), m.Rsetattr)
            else:
                async with self._core.use(node) as fid:
                    await self._client.call(convert.setattr_message(fid, attr, fields),
                                            m.Rsetattr)
        except P9Error as error:
            if error.errno != errno.ENOENT or not self._kernel_time_flush(fields):
                raise
            # The kernel writing back the times it kept (writeback caching) of a
            # file removed since: nothing is left to update. Failing it would
            # fail the next syncfs(2) of the whole mount.
            log.debug("times of inode %d not written back: the file is gone", inode)
        if node.attrs is None:
            async with self._core.use(node) as fid:
                return self._core.entry(node, await self._core.getattr_fid(fid))
        # What the server now has, as far as the client knows; valid for no time,
        # so the kernel asks the server (getattr) if anything looks at it.
        attrs = convert.after_setattr(node.attrs, attr, fields)
        node.attrs = attrs
        return attrs

    def _kernel_time_flush(self, fields: pyfuse3.SetattrFields) -> bool:
        """Whether a setattr is what a writeback-caching kernel sends for the
        modification times it kept: times only, and that mode on."""
        return self._core.options.writeback and not (
            fields.update_mode or fields.update_uid or fields.update_gid
            or fields.update_size or fields.update_atime
        )

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._nodes.get(inode)
        async with self._core.use(node) as fid:
            reply = await self._client.call(m.Treadlink(fid), m.Rreadlink)
        return reply.target

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._nodes.get(parent_inode)
        name = convert.check_name(name)
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFREG:
            fid = await self._core.clone(parent)
            try:
                flags = c.L_O_WRONLY | c.L_O_CREAT | c.L_O_EXCL
                await self._client.call(
                    m.Tlcreate(fid, name, flags, stat.S_IMODE(mode), ctx.gid), m.Rlcreate
                )
            finally:
                await self._core.clunk_quietly(fid)
        elif kind in (stat.S_IFIFO, stat.S_IFSOCK):
            async with self._core.use(parent) as dfid:
                await self._client.call(m.Tmknod(dfid, name, mode, 0, 0, ctx.gid), m.Rmknod)
        else:
            raise P9Error(errno.EPERM, "device nodes are not created on shared folders")
        return await self._core.walk_entry(parent, name)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._nodes.get(parent_inode)
        name = convert.check_name(name)
        async with self._core.use(parent) as dfid:
            with self._core.own_change(("in", parent.key[0], name)):
                await self._client.call(
                    m.Tmkdir(dfid, name, stat.S_IMODE(mode), ctx.gid), m.Rmkdir
                )
        return await self._core.walk_entry(parent, name)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._nodes.get(parent_inode)
        name = convert.check_name(name)
        async with self._core.use(parent) as dfid:
            with self._core.own_change(("in", parent.key[0], name)):
                await self._client.call(m.Tsymlink(dfid, name, target, ctx.gid), m.Rsymlink)
        return await self._core.walk_entry(parent, name)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self._nodes.get(inode)
        parent = self._nodes.get(new_parent_inode)
        new_name = convert.check_name(new_name)
        async with self._core.use(parent) as dfid, self._core.use(node) as fid:
            with self._core.own_change(("in", parent.key[0], new_name)):
                await self._client.call(m.Tlink(dfid, fid, new_name), m.Rlink)
        # The new name is a lookup of the same file.
        return await self._core.walk_entry(parent, new_name)

    async def unlinkat(self, parent_inode: int, name: bytes, flags: int) -> None:
        parent = self._nodes.get(parent_inode)
        name = convert.check_name(name)
        async with self._core.use(parent) as dfid:
            if m.Tunlinkat not in self._core.unsupported:
                try:
                    with self._core.own_change(("out", parent.key[0], name)):
                        await self._client.call(m.Tunlinkat(dfid, name, flags), m.Runlinkat)
                    return
                except P9Error as error:
                    if error.errno != errno.EOPNOTSUPP:
                        raise
                    self._core.unsupported.add(m.Tunlinkat)
            # A server without Tunlinkat (diod): walk to the file and Tremove it.
            fid, qid = await self._client.walk(dfid, [name])
        assert qid is not None
        is_dir = bool(qid.type & c.QTDIR)
        if is_dir != bool(flags & c.AT_REMOVEDIR):
            self._core.release_fid(fid)
            raise P9Error(errno.EISDIR if is_dir else errno.ENOTDIR)
        await self._client.remove(fid)

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
        async with self._core.use(old_parent) as old_dfid, self._core.use(new_parent) as new_dfid:
            try:
                with (self._core.own_change(("out", old_parent.key[0], name_old)),
                      self._core.own_change(("in", new_parent.key[0], name_new))):
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
                    self._core.release_fid(fid)
        await self._refresh_moved(new_parent, name_new)

    async def _refresh_moved(self, parent: Node, name: bytes) -> None:
        """Give a renamed file's node a fid walked by its new name.

        A path-based server (diod) keeps answering for the old path on the
        old fid; a fid-based one loses nothing by this.
        """
        try:
            async with self._core.use(parent) as dfid:
                fid, qid = await self._client.walk(dfid, [name])
        except P9Error:
            return
        assert qid is not None
        node = self._nodes.find(qid)
        if node is None:
            self._core.release_fid(fid)
        else:
            self._nodes.replace_fid(node, fid, parent, name)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        async with self._core.use(self._nodes.root) as fid:
            reply = await self._client.call(m.Tstatfs(fid), m.Rstatfs)
        return convert.statvfs(reply)

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        node = self._nodes.get(inode)
        async with self._core.use(node) as fid:
            attrs = self._core.entry(node, await self._core.getattr_fid(fid))
        if ctx.uid == 0:
            return not mode & os.X_OK or bool(attrs.st_mode & 0o111) or stat.S_ISDIR(attrs.st_mode)
        if ctx.uid == attrs.st_uid:
            granted = (attrs.st_mode >> 6) & 7
        elif ctx.gid == attrs.st_gid or attrs.st_gid in pyfuse3.get_sup_groups(ctx.pid):
            granted = (attrs.st_mode >> 3) & 7
        else:
            granted = attrs.st_mode & 7
        return mode & granted == mode
