"""The inode map: lookup counts, fid hand-over, eviction; and the -o option parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsf_fuse.inodes import ROOT_INODE, InodeMap, UnknownInode
from qsf_fuse.options import UsageError, parse_options
from qsf_p9 import constants as c
from qsf_p9.messages import Qid


def qid(path: int, directory: bool = False) -> Qid:
    return Qid(c.QTDIR if directory else 0, 1, path)


def make(max_fids: int = 100) -> tuple[InodeMap, list[int]]:
    clunked: list[int] = []
    return InodeMap(1, qid(0, True), clunked.append, max_fids), clunked


def test_lookups_balance_and_the_fid_goes_at_zero() -> None:
    nodes, clunked = make()
    node = nodes.remember(qid(5), 10, nodes.root, b"a")
    assert nodes.remember(qid(5), 11, nodes.root, b"b") is node  # a hard link: same inode
    assert clunked == [10]  # the older fid gave way to the newer
    nodes.add_lookup(node)
    assert node.lookups == 3
    nodes.forget(node.inode, 2)
    assert node.inode in nodes and clunked == [10]
    nodes.forget(node.inode, 1)
    assert node.inode not in nodes and clunked == [10, 11]
    assert nodes.find(qid(5)) is None
    with pytest.raises(UnknownInode):
        nodes.get(node.inode)


def test_forget_never_raises() -> None:
    nodes, clunked = make()
    nodes.forget(12345, 1)
    nodes.forget(ROOT_INODE, 1000)
    assert ROOT_INODE in nodes and clunked == []
    node = nodes.remember(qid(5), 10, nodes.root, b"a")
    nodes.forget(node.inode, 5)  # more than looked up: logged, dropped once
    assert clunked == [10]


def test_a_held_fid_is_clunked_only_when_released() -> None:
    nodes, clunked = make()
    node = nodes.remember(qid(5), 10, nodes.root, b"a")
    with nodes.hold(node) as fid:
        assert fid == 10
        nodes.forget(node.inode, 1)
        assert clunked == []
    assert clunked == [10]


def test_files_and_directories_with_one_path_stay_apart() -> None:
    nodes, _ = make()
    file_node = nodes.remember(qid(7), 10, nodes.root, b"f")
    dir_node = nodes.remember(qid(7, True), 11, nodes.root, b"d")
    assert file_node is not dir_node
    # The root's qid given to a child is a new inode, never the root.
    assert nodes.remember(qid(0, True), 12, nodes.root, b"r").inode != ROOT_INODE


def test_least_recently_used_fids_are_evicted() -> None:
    nodes, clunked = make(max_fids=3)
    made = [nodes.remember(qid(path), 100 + path, nodes.root, b"n%d" % path)
            for path in range(5)]
    assert clunked == [100, 101]
    assert made[0].ref is None and made[4].ref is not None
    assert nodes.fids_held == 4  # three nodes and the root
    # A fid in use is not evicted.
    with nodes.hold(made[2]):
        nodes.remember(qid(9), 109, nodes.root, b"n9")
        nodes.remember(qid(10), 110, nodes.root, b"n10")
        assert made[2].ref is not None
    # An evicted node takes a walked-again fid back.
    nodes.attach_fid(made[0], 200)
    assert made[0].ref is not None and made[0].ref.fid == 200


@given(st.lists(st.tuples(st.sampled_from(["remember", "forget", "hold"]),
                          st.integers(0, 6), st.integers(1, 3)), max_size=60))
def test_every_fid_is_clunked_exactly_once(ops: list[tuple[str, int, int]]) -> None:
    nodes, clunked = make(max_fids=3)
    next_fid = iter(range(1000, 100000))
    given_out: list[int] = []
    for op, path, count in ops:
        node = nodes.find(qid(path))
        if op == "remember":
            fid = next(next_fid)
            given_out.append(fid)
            nodes.remember(qid(path), fid, nodes.root, b"x")
        elif op == "forget" and node is not None:
            nodes.forget(node.inode, count)
        elif op == "hold" and node is not None and node.ref is not None:
            with nodes.hold(node):
                pass
    for inode in [n.inode for n in list(nodes._nodes.values()) if n is not nodes.root]:
        nodes.forget(inode, 10**6)
    assert sorted(clunked) == sorted(given_out)
    assert len(nodes) == 1


def test_options() -> None:
    config = parse_options(
        ["aname=/srv/x,uname=user,timeout=2.5", "request_timeout=0,msize=65536,ro",
         "fsname=qvm://work/home/user/Documents,subtype=qsf,allow_other,ignoreqv",
         "default_permissions"], "/mnt")
    assert config.aname == b"/srv/x" and config.uname == b"user"
    assert config.cache_timeout == 2.5 and config.request_timeout == 0
    assert config.msize == 65536 and config.ignoreqv
    options = config.fuse_options()
    assert {"ro", "allow_other", "nodev", "nosuid", "default_permissions",
            "fsname=qvm://work/home/user/Documents", "subtype=qsf"} <= options
    for bad in ("dev", "suid", "nope", "msize=100", "timeout=-1", "timeout=nan",
                "fsname=a,b", "max_fids=1"):
        with pytest.raises(UsageError):
            parse_options([bad], "/mnt")


def test_spare_clones_go_with_their_fid() -> None:
    nodes, clunked = make(max_fids=2)
    directory = nodes.remember(qid(5, True), 10, nodes.root, b"d")
    nodes.set_spare(directory, 11)
    nodes.set_spare(directory, 12)  # one is enough: the second goes back
    assert clunked == [12] and nodes.take_spare(directory) == 11
    assert nodes.take_spare(directory) is None
    nodes.set_spare(directory, 13)
    assert 13 in nodes.all_fids()
    nodes.replace_fid(directory, 14, nodes.root, b"d")  # a clone of the old fid is stale
    assert clunked == [12, 10, 13]
    nodes.set_spare(directory, 15)
    nodes.forget(directory.inode, 1)
    assert clunked == [12, 10, 13, 14, 15]


def test_a_node_given_a_fid_keeps_it_while_all_others_are_busy() -> None:
    nodes, clunked = make(max_fids=2)
    a = nodes.remember(qid(1), 11, nodes.root, b"a")
    b = nodes.remember(qid(2), 12, nodes.root, b"b")
    with nodes.hold(a), nodes.hold(b):
        c = nodes.remember(qid(3), 13, nodes.root, b"c")
        assert c.ref is not None and c.ref.fid == 13
        assert clunked == []
    # Once idle, the least recently used go first, never the newest.
    d = nodes.remember(qid(4), 14, nodes.root, b"d")
    assert d.ref is not None and c.ref is not None
    assert a.ref is None and b.ref is None and sorted(clunked) == [11, 12]
