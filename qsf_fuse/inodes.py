"""The inode map: FUSE inode numbers, their lookup counts and the fids behind them.

Every inode the kernel knows has a Node holding a fid walked to that file (never
opened: operations clone it). The kernel's lookup count is kept exactly: each
reply that hands out an entry (lookup, create, mkdir, mknod, symlink, link,
every readdirplus entry) adds one, `forget` takes its count away, and a node at
zero is dropped and its fid clunked.

Inode numbers are ours, not the server's qid.path (a hostile server could make
those collide with the root): a counter, never reused. Two names with the same
qid (hard links, or a file looked up again) share one node.

A node's fid can be replaced by a fresher one (a path-based server such as diod
ties a fid to the path it was walked by). An operation holds the fid it uses
(`hold`), and a replaced or forgotten fid is clunked only once no operation
holds it any more: `on_unused` is called with it then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from qsf_p9 import constants as c
from qsf_p9.messages import Qid

log = logging.getLogger(__name__)

ROOT_INODE: Final = 1  # pyfuse3.ROOT_INODE


@dataclass(eq=False)
class FidRef:
    """A server fid and the operations using it right now."""

    fid: int
    users: int = 0
    retired: bool = False


# What identifies a file: qid.path, and whether it is a directory (a server
# that reuses a path for a file and a directory gets two inodes, not one).
Key = tuple[int, bool]


def key_of(qid: Qid) -> Key:
    return (qid.path, bool(qid.type & c.QTDIR))


@dataclass(eq=False)
class Node:
    inode: int
    key: Key
    ref: FidRef
    lookups: int = 0
    # Cached attributes (a pyfuse3.EntryAttributes) and when they go stale.
    attrs: Any = None
    attrs_expiry: float = 0.0
    # (qid.version, mtime_ns, size) when the file was last opened: the page
    # cache is kept across opens only while this is unchanged.
    open_key: tuple[int, int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class UnknownInode(LookupError):
    """The kernel named an inode we do not know (or forgot)."""


class InodeMap:
    def __init__(self, root_fid: int, root_qid: Qid, on_unused: Callable[[int], None]) -> None:
        self._on_unused = on_unused
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[Key, Node] = {}
        self._next_inode = ROOT_INODE + 1
        # The root is never forgotten: its lookup count is not tracked.
        self.root = Node(ROOT_INODE, key_of(root_qid), FidRef(root_fid), lookups=1)
        self._nodes[ROOT_INODE] = self.root

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, inode: int) -> bool:
        return inode in self._nodes

    def get(self, inode: int) -> Node:
        try:
            return self._nodes[inode]
        except KeyError:
            raise UnknownInode(inode) from None

    def find(self, qid: Qid) -> Node | None:
        """The node of a file already known (by qid), if any."""
        return self._by_key.get(key_of(qid))

    def remember(self, qid: Qid, fid: int) -> Node:
        """Record one more lookup of the file qid names, walked to as fid.

        fid is consumed: it becomes the node's fid, and the fid it replaces is
        released (clunked once unused).
        """
        key = key_of(qid)
        node = self._by_key.get(key)
        if node is None:
            node = Node(self._next_inode, key, FidRef(fid))
            self._next_inode += 1
            self._nodes[node.inode] = node
            self._by_key[key] = node
        else:
            self._replace_fid(node, fid)
        node.lookups += 1
        return node

    def add_lookup(self, node: Node) -> None:
        """One more lookup of a known node, without a new fid."""
        if node.inode not in self._nodes:
            raise UnknownInode(node.inode)
        node.lookups += 1

    def replace_fid(self, node: Node, fid: int) -> None:
        """Give node a fresher fid (e.g. after a rename); the old one is released."""
        if self._nodes.get(node.inode) is not node:
            self._on_unused(fid)
            return
        self._replace_fid(node, fid)

    def _replace_fid(self, node: Node, fid: int) -> None:
        old = node.ref
        node.ref = FidRef(fid)
        self._retire(old)

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped count lookups of inode. Never raises."""
        node = self._nodes.get(inode)
        if node is None or node is self.root:
            if node is None:
                log.warning("forget of unknown inode %d", inode)
            return
        node.lookups -= count
        if node.lookups > 0:
            return
        if node.lookups < 0:
            log.warning("inode %d forgotten %d times more than looked up", inode, -node.lookups)
        del self._nodes[inode]
        if self._by_key.get(node.key) is node:
            del self._by_key[node.key]
        self._retire(node.ref)

    def forget_key(self, node: Node) -> None:
        """The file behind node is gone (or changed identity): stop finding it by qid."""
        if self._by_key.get(node.key) is node:
            del self._by_key[node.key]

    @contextmanager
    def hold(self, node: Node) -> Iterator[int]:
        """Use node's current fid; it is not clunked before the block ends."""
        ref = node.ref
        ref.users += 1
        try:
            yield ref.fid
        finally:
            ref.users -= 1
            if ref.retired and ref.users == 0:
                self._on_unused(ref.fid)

    def _retire(self, ref: FidRef) -> None:
        if ref.retired:
            return
        ref.retired = True
        if ref.users == 0:
            self._on_unused(ref.fid)

    def all_fids(self) -> list[int]:
        """The fids of every node still known (for the final clean-up)."""
        return [node.ref.fid for node in self._nodes.values()]
