"""The inode map: FUSE inode numbers, their lookup counts and the fids behind them.

Every inode the kernel knows has a Node holding a fid walked to that file (never
opened: operations clone it). The kernel's lookup count is kept exactly: each
reply that hands out an entry (lookup, create, mkdir, mknod, symlink, link,
every readdirplus entry) adds one, `forget` takes its count away, and a node at
zero is dropped and its fid clunked.

Inode numbers are ours, not the server's qid.path (a hostile server could make
those collide with the root): a counter, never given to another file (a file
forgotten and looked up again gets its old number back, MAX_RETIRED). Two
names with the same qid (hard links, or a file looked up again) share one node.

A node's fid can be replaced by a fresher one (a path-based server such as diod
ties a fid to the path it was walked by). An operation holds the fid it uses
(`hold`), and a replaced or forgotten fid is clunked only once no operation
holds it any more: `on_unused` is called with it then.

Servers bound their fids (qsf-server by its descriptor limit), while the kernel
may keep any number of inodes: at most `max_fids` nodes keep a fid, the least
recently used lose theirs (`evict`), and get a new one by walking their last
known name from their parent again (the file system does that walk).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from qsf_p9 import constants as c
from qsf_p9.messages import Qid

log = logging.getLogger(__name__)

ROOT_INODE: Final = 1  # pyfuse3.ROOT_INODE
DEFAULT_MAX_FIDS: Final = 4096
# Inode numbers of forgotten files kept for their qid: a file the kernel forgot
# (after an invalidation) and looks up again keeps its st_ino, as programs
# such as tar expect of a file that did not change.
MAX_RETIRED: Final = 65536


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
    # The fid walked to this file; None once evicted (walk parent/name again).
    ref: FidRef | None
    # Where the file was last seen: its directory's node and its name there.
    parent: Node | None = None
    name: bytes = b""
    lookups: int = 0
    # A clone of ref's fid kept ready for the next create in this directory.
    spare: int | None = None
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
    def __init__(
        self,
        root_fid: int,
        root_qid: Qid,
        on_unused: Callable[[int], None],
        max_fids: int = DEFAULT_MAX_FIDS,
    ) -> None:
        self._on_unused = on_unused
        self._max_fids = max(1, max_fids)
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[Key, Node] = {}
        # Nodes (but the root) that hold a fid, least recently used first.
        self._with_fid: OrderedDict[int, Node] = OrderedDict()
        self._next_inode = ROOT_INODE + 1
        self._retired: OrderedDict[Key, int] = OrderedDict()
        # The root is never forgotten nor evicted: its lookup count is not tracked.
        self.root = Node(ROOT_INODE, key_of(root_qid), FidRef(root_fid), lookups=1)
        self._nodes[ROOT_INODE] = self.root

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, inode: int) -> bool:
        return inode in self._nodes

    @property
    def fids_held(self) -> int:
        """Nodes holding a fid, the root included."""
        return len(self._with_fid) + 1

    def get(self, inode: int) -> Node:
        try:
            return self._nodes[inode]
        except KeyError:
            raise UnknownInode(inode) from None

    def find(self, qid: Qid) -> Node | None:
        """The node of a file already known (by qid), if any."""
        return self._by_key.get(key_of(qid))

    def find_path(self, path: int) -> list[Node]:
        """The nodes known by a qid.path (a file and a directory may share one)."""
        nodes = [node for node in (self._by_key.get((path, False)), self._by_key.get((path, True)))
                 if node is not None]
        if self.root.key[0] == path:
            nodes.append(self.root)
        return nodes

    def known(self) -> list[Node]:
        """Every node (the root included)."""
        return list(self._nodes.values())

    def remember(self, qid: Qid, fid: int | None, parent: Node, name: bytes) -> Node:
        """Record one more lookup of the file qid names, as parent/name.

        fid, walked to the file, is consumed: it becomes the node's fid, and the
        fid it replaces is released (clunked once unused). Without one, the node
        keeps its fid or has none until it is walked to.
        """
        key = key_of(qid)
        node = self._by_key.get(key)
        if node is None:
            number = self._retired.pop(key, None)
            if number is None:
                number = self._next_inode
                self._next_inode += 1
            node = Node(number, key, None)
            self._nodes[node.inode] = node
            self._by_key[key] = node
        node.parent, node.name = parent, name
        if fid is not None:
            self._set_fid(node, fid)
        node.lookups += 1
        return node

    def add_lookup(self, node: Node) -> None:
        """One more lookup of a known node, without a new fid."""
        if self._nodes.get(node.inode) is not node:
            raise UnknownInode(node.inode)
        node.lookups += 1

    def replace_fid(self, node: Node, fid: int, parent: Node, name: bytes) -> None:
        """Give node a fresher fid (e.g. after a rename); the old one is released."""
        if self._nodes.get(node.inode) is not node:
            self._on_unused(fid)
            return
        node.parent, node.name = parent, name
        self._set_fid(node, fid)

    def attach_fid(self, node: Node, fid: int) -> None:
        """A fid walked again for an evicted node (released if the node has one by now)."""
        if node.ref is not None or self._nodes.get(node.inode) is not node:
            self._on_unused(fid)
            if node.ref is None:
                raise UnknownInode(node.inode)
            return
        self._set_fid(node, fid)

    def _set_fid(self, node: Node, fid: int) -> None:
        old = node.ref
        node.ref = FidRef(fid)
        if old is not None:
            self._retire(old)
            self.drop_spare(node)
        if node is not self.root:
            self._with_fid[node.inode] = node
            self._with_fid.move_to_end(node.inode)
            self.evict(keep=node)

    def evict(self, keep: Node | None = None) -> None:
        """Release the fids of the least recently used idle nodes beyond max_fids.

        Nodes whose fid is in use, and keep (which just got its fid), stay: the
        limit may be exceeded while that many are busy.
        """
        busy: list[Node] = []
        while len(self._with_fid) + len(busy) > self._max_fids and self._with_fid:
            _, node = self._with_fid.popitem(last=False)
            assert node.ref is not None
            if node.ref.users or node is keep:
                busy.append(node)
                continue
            ref, node.ref = node.ref, None
            self._retire(ref)
            self.drop_spare(node)
        for node in reversed(busy):  # back in their order; keep stays the most recent
            self._with_fid[node.inode] = node
            self._with_fid.move_to_end(node.inode, last=node is keep)

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
            self._retired[node.key] = inode
            if len(self._retired) > MAX_RETIRED:
                self._retired.popitem(last=False)
        self._with_fid.pop(inode, None)
        if node.ref is not None:
            ref, node.ref = node.ref, None
            self._retire(ref)
        self.drop_spare(node)

    @contextmanager
    def hold(self, node: Node) -> Iterator[int]:
        """Use node's current fid (it must have one); not clunked before the block ends."""
        ref = node.ref
        if ref is None:
            raise RuntimeError(f"inode {node.inode} has no fid to hold")
        ref.users += 1
        if node.inode in self._with_fid:
            self._with_fid.move_to_end(node.inode)
        try:
            yield ref.fid
        finally:
            ref.users -= 1
            if ref.retired and ref.users == 0:
                self._on_unused(ref.fid)

    def take_spare(self, node: Node) -> int | None:
        """The spare clone of node's fid, if one is ready (it is the caller's now)."""
        spare, node.spare = node.spare, None
        return spare

    def set_spare(self, node: Node, fid: int) -> None:
        """Keep fid, a clone of node's current fid, for later (released if not wanted)."""
        if node.spare is not None or node.ref is None or self._nodes.get(node.inode) is not node:
            self._on_unused(fid)
            return
        node.spare = fid

    def drop_spare(self, node: Node) -> None:
        if node.spare is not None:
            self._on_unused(node.spare)
            node.spare = None

    def _retire(self, ref: FidRef) -> None:
        if ref.retired:
            return
        ref.retired = True
        if ref.users == 0:
            self._on_unused(ref.fid)

    def all_fids(self) -> list[int]:
        """The fids of every node still holding one (for the final clean-up)."""
        fids = [node.ref.fid for node in self._nodes.values() if node.ref is not None]
        return fids + [node.spare for node in self._nodes.values() if node.spare is not None]
