"""Change notification from a qsf server: the Tqsfwatch long poll, and the
kernel cache invalidations its events call for (docs/PROTOCOL.md).

While events come (`Core.live`), the kernel keeps entries and attributes for
minutes, names found absent too (negative entries), and pages across opens;
every change the server reports is pushed to the kernel with pyfuse3's
invalidate_inode / invalidate_entry. Those calls may block while the kernel
finishes a related request, so they never run in a handler nor in the event
loop: one worker thread applies each batch, after every handler that started
before the batch arrived has ended (Core.new_epoch), so that no reply computed
before a change reaches the kernel after the change's invalidation.

RESET (events were lost) invalidates everything known; ENDED, a failed poll or
a server that misbehaves also stops the long caching (back to `cache_timeout`).
"""

from __future__ import annotations

import errno
import logging
import threading
from typing import Final

import pyfuse3
import trio

from qsf_p9 import constants as c
from qsf_p9 import messages as m

from . import threads
from .client import ConnectionLost, P9Error
from .core import Core
from .inodes import Node

log = logging.getLogger(__name__)

# Bytes of events asked for in one poll.
POLL_BYTES: Final = 64 * 1024
# A batch needing more invalidations than this is applied as "everything".
MAX_BATCH: Final = 4096
# Longest wait for the handlers of older epochs before applying a batch anyway.
DRAIN_TIMEOUT: Final = 2.0

# ("inode", inode, attr_only) or ("entry", parent inode, name)
Invalidation = tuple[str, int, bool | bytes]


class Notifier:
    def __init__(self, core: Core) -> None:
        self._core = core
        self.batches = 0  # batches applied (tests)
        self.applied = trio.Event()  # set after each batch (tests)

    async def run(self) -> None:
        """Poll until the connection or the server's notification ends (or until
        cancelled, at unmount)."""
        core = self._core
        core.live = True
        try:
            stopped = await self._poll()
        finally:
            core.live = False
        if stopped and not core.client.dead:
            # Back to short lifetimes: nothing cached for long may stay.
            await self._invalidate(self._everything())

    async def _poll(self) -> bool:
        """Apply batches; True once notification stopped (False: the connection went)."""
        client = self._core.client
        while True:
            count = min(POLL_BYTES, client.msize - c.IOHDRSZ)
            try:
                reply = await client.call(m.Tqsfwatch(count), m.Rqsfwatch)
            except ConnectionLost:
                return False
            except P9Error as error:
                if error.errno == errno.ETIMEDOUT:
                    continue  # a long poll may outlast the request timeout
                log.warning("change notification ends: %s", error)
                return True
            if await self._apply(reply.events):
                log.info("the server ended change notification")
                return True

    async def _apply(self, events: tuple[m.QsfEvent, ...]) -> bool:
        """Apply one batch; whether the server ended notification."""
        log.debug("change events: %s", events)
        ended = any(event.kind == c.QSF_EV_ENDED for event in events)
        if ended:
            self._core.live = False
        todo: list[Invalidation] = []
        everything = ended
        for event in events:
            if event.kind in (c.QSF_EV_RESET, c.QSF_EV_ENDED):
                everything = True
                break
            todo.extend(self._for_event(event))
            if len(todo) > MAX_BATCH:
                everything = True
                break
        await self._core.new_epoch(DRAIN_TIMEOUT)
        await self._invalidate(self._everything() if everything else todo)
        self.batches += 1
        self.applied.set()
        self.applied = trio.Event()
        return ended

    def _nodes(self, path: int) -> list[Node]:
        return self._core.nodes.find_path(path) if path else []

    def _for_event(self, event: m.QsfEvent) -> list[Invalidation]:
        kind = event.kind
        out: list[Invalidation] = []
        if kind in (c.QSF_EV_CHANGED, c.QSF_EV_ATTRIB):
            for node in self._nodes(event.path):
                self._forget_cached(node, data=kind == c.QSF_EV_CHANGED)
                out.append(("inode", node.inode, kind == c.QSF_EV_ATTRIB))
            return out
        # A name came or went in a directory: its entry, and the directory's attributes.
        known = self._nodes(event.path)  # a created or moved-in file we knew
        arrived = kind in (c.QSF_EV_CREATED, c.QSF_EV_MOVED_TO)
        if self._core.is_own(("in" if arrived else "out", event.dir, event.name)):
            return out  # our own create, unlink or rename: the kernel knows
        for directory in self._nodes(event.dir):
            if not directory.key[1]:
                continue
            self._core.negatives.discard((directory.inode, event.name))
            if not (arrived and any(node.parent is directory and node.name == event.name
                                    for node in known)):
                # (The kernel's entry already names that file when we made it: kept.)
                out.append(("entry", directory.inode, event.name))
            out.append(("inode", directory.inode, True))
        for node in known:
            self._forget_cached(node, data=False)
            out.append(("inode", node.inode, True))
        return out

    @staticmethod
    def _forget_cached(node: Node, *, data: bool) -> None:
        node.attrs_expiry = 0.0
        node.extra.pop("absent_xattrs", None)
        node.extra.pop("no_xattrs", None)
        node.extra["xattr_generation"] = node.extra.get("xattr_generation", 0) + 1
        if data:
            node.open_key = None  # the next open drops the pages too

    def _everything(self) -> list[Invalidation]:
        core = self._core
        todo: list[Invalidation] = []
        for node in core.nodes.known():
            self._forget_cached(node, data=True)
            todo.append(("inode", node.inode, False))
            if node.parent is not None:
                todo.append(("entry", node.parent.inode, node.name))
        todo.extend(("entry", parent, name) for parent, name in core.negatives)
        core.negatives.clear()
        return todo

    async def _invalidate(self, todo: list[Invalidation]) -> None:
        if not todo:
            return
        # At unmount the thread may wait in the kernel for a request nobody will
        # answer any more: then it is abandoned (and told to stop) rather than awaited.
        stop = threading.Event()
        try:
            await threads.run_abandoning(_run, todo, stop)
        finally:
            stop.set()


def _run(todo: list[Invalidation], stop: threading.Event) -> None:
    """In a worker thread: tell the kernel (unknown entries and inodes are fine)."""
    for what, number, detail in todo:
        if stop.is_set():
            return
        log.debug("invalidate %s %d %r", what, number, detail)
        try:
            if what == "inode":
                pyfuse3.invalidate_inode(number, bool(detail))
            else:
                assert isinstance(detail, bytes)
                pyfuse3.invalidate_entry(number, detail)
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBADF):
                log.debug("invalidate %s %d: %s", what, number, error)
