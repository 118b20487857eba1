"""What every part of the file system shares: the connection, the inode map,
the open files and directories, and the helpers that walk, clone and stat.

Errors become FUSEError at one boundary (`boundary`, used by fs.Operations): a
server's Rlerror errno passes through, anything unexpected becomes EIO plus a
log line, so that no handler can kill the mount.
"""

from __future__ import annotations

import errno
import functools
import logging
import stat
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

import pyfuse3
import trio

from qsf_p9 import constants as c
from qsf_p9 import messages as m

from . import convert, threads
from .client import BadReply, P9Client, P9Error
from .inodes import DEFAULT_MAX_FIDS, InodeMap, Node, UnknownInode, key_of

if TYPE_CHECKING:
    from .data import OpenFile
    from .dirs import OpenDir

log = logging.getLogger(__name__)

MIN_IOUNIT: Final = 4096

P = ParamSpec("P")
R = TypeVar("R")


# Changes this mount makes itself come back as change events: the kernel knows
# them already, so the matching event is skipped if it comes within this window.
OWN_WINDOW: Final = 1.0
MAX_OWN: Final = 8192
# Negative entries (names found absent) the kernel may cache while change
# notification is live; beyond this many, absences are not cached.
MAX_NEGATIVE: Final = 16384


@dataclass
class FsOptions:
    cache_timeout: float = 1.0  # kernel entry and attribute cache, seconds
    ignoreqv: bool = False  # use the page cache even when qid.version is 0
    max_fids: int = DEFAULT_MAX_FIDS  # fids kept by known inodes (beyond: walk again)
    # The same cache while the server pushes change events (notify.py).
    notify_timeout: float = 300.0
    # Writeback caching: the kernel keeps written data and sends it later (data.py).
    writeback: bool = False


def boundary(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Convert every error of a handler to FUSEError, the only one pyfuse3 accepts."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        # The handler's owner (fs.Operations) counts it as running (Core.begin).
        core: Core | None = getattr(args[0], "_core", None) if args else None
        epoch = core.begin() if core is not None else 0
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as error:
            raise pyfuse3.FUSEError(errno_of(handler.__name__, error)) from None
        finally:
            if core is not None:
                core.end(epoch)

    return wrapper


def errno_of(where: str, error: Exception) -> int:
    """The errno for the kernel: a call's own errno, else EIO and a log line."""
    if isinstance(error, ExceptionGroup):
        # Concurrent calls failed: the first one's errno speaks for them.
        leaves = error.exceptions
        return errno_of(where, leaves[0]) if leaves else errno.EIO
    if isinstance(error, P9Error | pyfuse3.FUSEError):
        # The kernel refuses an error reply outside 1..511 (the request would hang).
        return error.errno if 0 < error.errno < 512 else errno.EIO
    if isinstance(error, UnknownInode):
        log.warning("%s: unknown inode %s", where, error)
        return errno.ESTALE
    log.error("%s failed", where, exc_info=error)
    return errno.EIO


class Core:
    """The state of one mount and the 9P helpers its handlers share."""

    def __init__(
        self,
        client: P9Client,
        root_fid: int,
        root_qid: m.Qid,
        nursery: trio.Nursery,
        options: FsOptions,
    ) -> None:
        self.client = client
        self.nursery = nursery
        self.options = options
        self.nodes = InodeMap(root_fid, root_qid, self.release_fid, options.max_fids)
        self.files: dict[int, OpenFile] = {}
        self.dirs: dict[int, OpenDir] = {}
        self._next_fh = 1
        # Messages the server answered EOPNOTSUPP to: their fallbacks are used directly.
        self.unsupported: set[type[m.Message]] = set()
        # Change notification (notify.py): live while the server sends events.
        self.live = False
        # Names the kernel caches as absent, (parent inode, name): only while live.
        self.negatives: set[tuple[int, bytes]] = set()
        # Handlers running, by the epoch they started in; each batch of events
        # starts a new epoch and is applied once the older handlers have ended,
        # so that no reply computed before a change reaches the kernel after it.
        self.epoch = 0
        # Own changes, ("in"|"out", directory qid.path, name) or ("file", qid.path),
        # and until when their echo is expected.
        self.own: dict[tuple[object, ...], float] = {}
        self._running: dict[int, int] = {}
        self._ended = trio.Event()

    # -- epochs and cache lifetimes -----------------------------------------

    def begin(self) -> int:
        epoch = self.epoch
        self._running[epoch] = self._running.get(epoch, 0) + 1
        return epoch

    def end(self, epoch: int) -> None:
        left = self._running[epoch] - 1
        if left:
            self._running[epoch] = left
            return
        del self._running[epoch]
        if epoch < self.epoch:
            self._ended.set()

    async def new_epoch(self, timeout: float) -> None:
        """Start an epoch; return once every handler of the older ones has ended
        (or after timeout: a handler stuck on the server does not hold events up)."""
        self.epoch += 1
        with trio.move_on_after(timeout):
            while any(epoch < self.epoch for epoch in self._running):
                self._ended = trio.Event()
                await self._ended.wait()

    @contextmanager
    def own_change(self, key: tuple[object, ...]) -> Iterator[None]:
        """Expect key's change event as the echo of the block's request (dropped if it fails).

        A name coming in ("in") or going ("out") of a directory is keyed by kind,
        so a foreign change of another kind is never taken for ours; a failed
        request expects nothing (a foreign create that made ours fail EEXIST
        still invalidates)."""
        if not self.live:
            yield
            return
        if len(self.own) >= MAX_OWN:
            now = trio.current_time()
            self.own = {k: t for k, t in self.own.items() if t > now}
            if len(self.own) >= MAX_OWN:
                self.own.clear()
        self.own[key] = trio.current_time() + OWN_WINDOW
        try:
            yield
        except BaseException:
            self.own.pop(key, None)
            raise

    def is_own(self, key: tuple[object, ...]) -> bool:
        """Whether an event is the echo of this mount's own change (consumed)."""
        until = self.own.pop(key, None)
        return until is not None and until >= trio.current_time()

    @property
    def cache_timeout(self) -> float:
        """How long the kernel may keep what it is told now."""
        return self.options.notify_timeout if self.live else self.options.cache_timeout

    def negative_entry(self, parent: Node, name: bytes) -> pyfuse3.EntryAttributes | None:
        """An absence the kernel may cache (while live and within bounds), or None."""
        if not self.live or len(self.negatives) >= MAX_NEGATIVE:
            return None
        self.negatives.add((parent.inode, name))
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = 0
        attrs.entry_timeout = self.cache_timeout
        return attrs

    def release_fid(self, fid: int) -> None:
        """Clunk fid in the background (called when the inode map lets go of it)."""
        self.nursery.start_soon(self.clunk_quietly, fid)

    async def clunk_quietly(self, fid: int) -> None:
        try:
            await self.client.clunk(fid)
        except P9Error as error:
            if not self.client.dead:
                log.debug("clunk of fid %d: %s", fid, error)

    def new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    @property
    def io_max(self) -> int:
        return self.client.msize - c.IOHDRSZ

    def iounit(self, iounit: int) -> int:
        # A hint only: a tiny one (a server asking for a flood of requests) is ignored.
        return min(iounit, self.io_max) if iounit >= MIN_IOUNIT else self.io_max

    async def getattr_fid(self, fid: int) -> m.Rgetattr:
        return await self.client.call(m.Tgetattr(fid, c.GETATTR_BASIC), m.Rgetattr)

    def entry(self, node: Node, reply: m.Rgetattr,
              timeout: float | None = None) -> pyfuse3.EntryAttributes:
        """The kernel's view of node from a fresh Rgetattr (also cached on node)."""
        if stat.S_ISDIR(reply.mode) != node.key[1]:
            raise BadReply("a qid and the mode of its file disagree on being a directory")
        timeout = self.cache_timeout if timeout is None else timeout
        attrs = convert.entry_attributes(reply, node.inode, timeout)
        node.attrs = attrs
        node.attrs_expiry = trio.current_time() + timeout
        self.note_version(node, reply)
        return attrs

    def note_version(self, node: Node, reply: m.Rgetattr) -> None:
        """Drop node's cached data if the server changed it while only its version tells."""
        if node.open_key is None:
            return
        key = convert.cache_key(reply.qid.version, node.attrs)
        if key != node.open_key and key[1:] == node.open_key[1:]:
            # mtime and size unchanged: the kernel would not notice by itself.
            node.open_key = None
            self.nursery.start_soon(self.invalidate, node.inode)

    async def invalidate(self, inode: int) -> None:
        try:
            # May wait for page locks held by a read we are serving: not in a handler.
            await threads.run_abandoning(pyfuse3.invalidate_inode, inode, False)
        except OSError as error:
            if error.errno != errno.ENOENT:
                log.warning("invalidate inode %d: %s", inode, error)

    async def walk_entry(self, parent: Node, name: bytes) -> pyfuse3.EntryAttributes:
        """Look name up in parent: one more kernel lookup of its node."""
        async with self.use(parent) as parent_fid:
            fid, qid = await self.client.walk(parent_fid, [name])
        assert qid is not None
        try:
            reply = await self.getattr_fid(fid)
            if reply.qid.path != qid.path:
                raise BadReply("Rgetattr names another file than Rwalk")
        except BaseException:
            self.release_fid(fid)
            raise
        node = self.nodes.remember(qid, fid, parent, name)
        try:
            return self.entry(node, reply)
        except BaseException:
            self.nodes.forget(node.inode, 1)
            raise

    @asynccontextmanager
    async def use(self, node: Node) -> AsyncIterator[int]:
        """node's fid for the block, walked again first if it was evicted."""
        if node.ref is None and node is not self.nodes.root and node.inode not in self.nodes:
            # A forgotten directory on the way to a file still known: a fid for now only.
            fid = await self.walk_again(node)
            try:
                yield fid
            finally:
                self.release_fid(fid)
            return
        if node.ref is None:
            self.nodes.attach_fid(node, await self.walk_again(node))
        with self.nodes.hold(node) as fid:
            yield fid

    async def walk_again(self, node: Node) -> int:
        """A new fid for node, walked by its last known name in its parent."""
        parent = node.parent
        if parent is None:
            raise P9Error(errno.ESTALE)
        async with self.use(parent) as parent_fid:
            fid, qid = await self.client.walk(parent_fid, [node.name])
        assert qid is not None
        if key_of(qid) != node.key:
            self.release_fid(fid)
            raise P9Error(errno.ESTALE, "the file was replaced since it was looked up")
        return fid

    async def clone_for_create(self, node: Node) -> int:
        """A clone of a directory's fid, from the spare one kept ready if there is one.

        Tlcreate turns the fid it is given into the new file, so every create
        needs a clone of the directory's fid first: making the next one in the
        background saves a round trip on the following create.
        """
        fid = self.nodes.take_spare(node)
        if fid is None:
            fid = await self.clone(node)
        self.nursery.start_soon(self.make_spare, node)
        return fid

    async def make_spare(self, node: Node) -> None:
        if node.spare is not None or node.ref is None:
            return
        ref = node.ref
        try:
            fid = await self.clone(node)
        except (P9Error, UnknownInode):
            return
        if node.ref is not ref:  # replaced or evicted meanwhile: a clone of the old one
            self.release_fid(fid)
            return
        self.nodes.set_spare(node, fid)

    async def clone(self, node: Node) -> int:
        """A new fid for node's file, to open or to turn into something else."""
        async with self.use(node) as fid:
            newfid, _ = await self.client.walk(fid, [])
        return newfid
