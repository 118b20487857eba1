"""Directories: opendir, readdirplus (every entry resolved to its attributes,
READDIR_BATCH at a time), releasedir, fsyncdir."""

from __future__ import annotations

import errno
import logging
import stat
from array import array
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import pyfuse3
import trio

from qsf_p9 import constants as c
from qsf_p9 import messages as m

from . import convert
from .client import BadReply, P9Error
from .core import Core
from .inodes import Node, UnknownInode

log = logging.getLogger(__name__)

# Readdirplus entries resolved (walk + getattr) concurrently.
READDIR_BATCH: Final = 32
# A directory listing longer than this is cut (a server could list forever);
# what an open directory keeps of it is 8 bytes an entry (OpenDir.cookies).
MAX_DIR_ENTRIES: Final = 1_000_000


class Listed(NamedTuple):
    name: bytes
    qid: m.Qid
    plus: m.QsfDirent | None = None
    epoch: int = 0


@dataclass(eq=False)
class OpenDir:
    """A directory open for listing: position i (next_id i + 1) is the i-th
    entry the server listed, invalid names left out."""

    fid: int
    node: Node
    # The entries fetched and not yet handed to the kernel, from position `start`
    # on. Each: name, qid, and from a Tqsfreaddir its entry and the epoch it
    # came in. What the kernel took is dropped (the server may list for ever).
    entries: list[Listed] = field(default_factory=list)
    start: int = 0
    # cookies[i]: the 9P offset that lists on after position i (seekdir).
    cookies: array[int] = field(default_factory=lambda: array("Q"))
    cookie: int = 0  # the 9P offset to continue from
    eof: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)
    # Entries resolved but not yet taken by the kernel, by position; each holds
    # one lookup (None: the name vanished).
    ready: dict[int, tuple[bytes, pyfuse3.EntryAttributes] | None] = field(
        default_factory=dict
    )
    # The epoch each ready entry was resolved in.
    ready_epoch: dict[int, int] = field(default_factory=dict)
    # The nodes handed to the kernel, in listing order (for the xattr read-ahead).
    listed: list[Node] = field(default_factory=list)


class Directories:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._client = core.client
        self._nodes = core.nodes
        self._options = core.options
        self._nursery = core.nursery

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._nodes.get(inode)
        fid = await self._core.clone(node)
        try:
            await self._client.call(
                m.Tlopen(fid, c.L_O_RDONLY | c.L_O_DIRECTORY), m.Rlopen
            )
        except BaseException:
            self._core.release_fid(fid)
            raise
        fh = self._core.new_fh()
        self._core.dirs[fh] = OpenDir(fid, node)
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        directory = self._core.dirs[fh]
        async with directory.lock:
            if start_id == 0 and (directory.cookies or directory.eof):
                # Rewind: list afresh.
                self._seek(directory, 0)
                directory.listed = []
            elif not directory.start <= start_id <= directory.start + len(directory.entries):
                if start_id > len(directory.cookies):
                    return  # no offset this listing gave: the end
                self._seek(directory, start_id)
            position = start_id
            # One call ends in bounded time even if every name vanishes before
            # it is resolved (or a server lists such names for ever).
            deadline = trio.current_time() + self._client.timeout
            sent = 0
            while True:
                if trio.current_time() > deadline:
                    if sent:
                        return
                    log.warning("no entry of the listing resolved for %.0f s: failing "
                                "readdir", self._client.timeout)
                    raise P9Error(errno.EIO)
                # What the kernel took is done with.
                del directory.entries[: position - directory.start]
                directory.start = position
                while not directory.entries and not directory.eof:
                    await self._fetch(directory)
                batch = directory.entries[:READDIR_BATCH]
                if not batch:
                    return
                todo = [index for index in range(len(batch))
                        if position + index not in directory.ready]
                ready_epoch = directory.ready_epoch
                epoch = self._core.epoch
                resolved = await self._resolve(directory.node, [batch[i] for i in todo])
                for index, item in zip(todo, resolved, strict=True):
                    directory.ready[position + index] = item
                    ready_epoch[position + index] = epoch
                for index in range(len(batch)):
                    item = directory.ready.pop(position + index)
                    if item is None:  # vanished since it was listed
                        continue
                    name, attrs = item
                    if ready_epoch.get(position + index, self._core.epoch) != self._core.epoch:
                        # Resolved before the last change events: not for long.
                        attrs.entry_timeout = attrs.attr_timeout = self._options.cache_timeout
                    if not pyfuse3.readdir_reply(token, name, attrs, position + index + 1):
                        # The kernel's buffer is full: keep it for the next call.
                        directory.ready[position + index] = item
                        return
                    sent += 1
                    if name not in (b".", b".."):
                        self._note_listed(directory, attrs.st_ino)
                position += len(batch)

    def _seek(self, directory: OpenDir, position: int) -> None:
        """List on from position (0: afresh), with the 9P offset noted for it."""
        self._drop_ready(directory)
        directory.entries.clear()
        directory.start = position
        directory.cookie = directory.cookies[position - 1] if position else 0
        del directory.cookies[position:]
        directory.eof = False

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
        directory.ready_epoch.clear()

    async def _fetch(self, directory: OpenDir) -> None:
        count = self._client.msize - c.READDIRHDRSZ
        reply: m.Rreaddir | m.Rqsfreaddir
        epoch = self._core.epoch
        if self._client.qsf:
            reply = await self._client.call(
                m.Tqsfreaddir(directory.fid, directory.cookie, count), m.Rqsfreaddir
            )
        else:
            reply = await self._client.call(
                m.Treaddir(directory.fid, directory.cookie, count), m.Rreaddir
            )
        if not reply.entries:
            directory.eof = True
            return
        for entry in reply.entries:
            if convert.valid_entry_name(entry.name) or entry.name in (b".", b".."):
                plus = entry if isinstance(entry, m.QsfDirent) else None
                directory.entries.append(Listed(entry.name, entry.qid, plus, epoch))
                directory.cookies.append(entry.offset)
            else:
                log.warning("skipping a directory entry with an invalid name %r", entry.name)
        directory.cookie = reply.entries[-1].offset
        if len(directory.cookies) > MAX_DIR_ENTRIES:
            log.warning("directory listing cut at %d entries", MAX_DIR_ENTRIES)
            directory.eof = True

    async def _resolve(
        self, parent: Node, batch: list[Listed]
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
            if batch[index].plus is not None:
                listed = self._from_listing(parent, batch[index])
                if listed is not None:
                    results[index] = (name, listed)
                    return
            try:
                node = self._nodes.find(qid)
                if node is not None:
                    results[index] = (name, await self._refresh_known(node))
                    return
            except (P9Error, UnknownInode):
                pass  # stale: walk by name
            try:
                results[index] = (name, await self._core.walk_entry(parent, name))
            except P9Error as error:
                if error.errno not in (errno.ENOENT, errno.ESTALE):
                    raise

        try:
            async with trio.open_nursery() as nursery:
                for index, (name, qid, _, _) in enumerate(batch):
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

    def _from_listing(self, parent: Node, listed: Listed) -> pyfuse3.EntryAttributes | None:
        """The entry from a Tqsfreaddir listing's own attributes, as one lookup;
        None when they cannot be used (not given, or events came since)."""
        plus = listed.plus
        if (plus is None or not plus.flags & c.QSF_DIRENT_ATTR
                or plus.attr.qid.path != plus.qid.path or listed.epoch != self._core.epoch):
            return None
        for nsec in (plus.attr.atime_nsec, plus.attr.mtime_nsec, plus.attr.ctime_nsec):
            if nsec >= 1_000_000_000:
                raise BadReply(f"Rqsfreaddir entry with {nsec} nanoseconds")
        node = self._nodes.remember(plus.qid, None, parent, listed.name)
        try:
            attrs = self._core.entry(node, plus.attr)
        except BaseException:
            self._nodes.forget(node.inode, 1)
            raise
        if plus.flags & c.QSF_DIRENT_XATTRS:
            node.extra.pop("no_xattrs", None)
        else:
            node.extra["no_xattrs"] = True
        return attrs

    async def _refresh_known(self, node: Node) -> pyfuse3.EntryAttributes:
        """Fresh attributes of a node already known, as one more lookup of it.

        One Tgetattr on its fid instead of a walk; P9Error if that fid no
        longer names the same file (a path-based server after a rename).
        """
        async with self._core.use(node) as fid:
            reply = await self._core.getattr_fid(fid)
        if reply.qid.path != node.key[0]:
            raise P9Error(errno.ESTALE)
        attrs = self._core.entry(node, reply)
        self._nodes.add_lookup(node)
        return attrs

    async def releasedir(self, fh: int) -> None:
        directory = self._core.dirs.pop(fh, None)
        if directory is not None:
            self._drop_ready(directory)
            await self._core.clunk_quietly(directory.fid)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        directory = self._core.dirs[fh]
        try:
            await self._client.call(m.Tfsync(directory.fid, int(datasync)), m.Rfsync)
        except P9Error as error:
            if error.errno not in (errno.EINVAL, errno.EBADF):
                raise
