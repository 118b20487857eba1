"""A hostile client tries to leave the export; nothing outside may be read or changed.

Layout: tmp/outside holds canary files whose content must never appear in
any byte the server sends; an inotify watch on tmp/outside and tmp itself
must see no event at all (open, access, create, attribute change...), and
the stat of everything outside must be unchanged. No reply may carry the
qid of anything outside. Every case runs in-process on a fresh export, and
all of them again against `python -m qsf_server` in one session.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import support
import trio
from server_p9client import (
    ROOT,
    Client,
    check_user_can_run_the_server,
    served,
    subprocess_server,
)
from server_watch import Inotify

from qsf_p9 import constants as c
from qsf_p9 import messages as m


@dataclass
class Layout:
    base: Path
    export: Path
    outside: Path
    canary: bytes

    def outside_state(self) -> dict[str, tuple[int, int, int, int, int]]:
        state = {}
        for path in [self.base, *self.outside.rglob("*"), self.outside]:
            st = os.lstat(path)
            state[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                st.st_nlink)
        state["names"] = tuple(sorted(os.listdir(self.base)))  # type: ignore[assignment]
        return state

    def outside_inodes(self) -> set[int]:
        return {os.lstat(p).st_ino for p in [self.base, self.outside, *self.outside.rglob("*")]}


def make_layout(base: Path) -> Layout:
    canary = b"CANARY-" + secrets.token_hex(16).encode()
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(canary)
    (outside / "dir").mkdir()
    (outside / "dir" / "secret2.txt").write_bytes(canary)
    export = base / "export"
    export.mkdir()
    (export / "hello.txt").write_bytes(b"hello")
    (export / "d").mkdir()
    os.symlink(outside, export / "abs")  # absolute
    os.symlink("../outside", export / "rel")  # relative
    os.symlink("../../outside", export / "d" / "up2")
    os.symlink("hop2", export / "hop1")  # nested
    os.symlink("rel", export / "hop2")
    os.symlink("../outside/secret.txt", export / "filelink")
    os.symlink(".", export / "self")
    os.mkfifo(export / "fifo")
    if os.geteuid() == 0:
        os.mknod(export / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return Layout(base, export, outside, canary)


Case = Callable[[Client, Layout], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(function: Case) -> Case:
    CASES[function.__name__] = function
    return function


async def walk_qids(client: Client, *names: bytes, start: int = ROOT) -> m.Message:
    return await client.call(m.Twalk(start, client.fid(), names))


@case
async def dotdot_from_root(client: Client, layout: Layout) -> None:
    root = (await client.ok(m.Tgetattr(ROOT, c.GETATTR_BASIC))).qid
    reply = await walk_qids(client, b"..", b"..", b"outside", b"secret.txt")
    assert isinstance(reply, m.Rwalk) and [q.path for q in reply.wqids] == [root.path] * 2
    reply = await walk_qids(client, b"d", b"..", b"..", b"..", b"outside")
    assert isinstance(reply, m.Rwalk) and len(reply.wqids) == 4
    fid = await client.walk(*[b".."] * 16)
    assert (await client.ok(m.Tgetattr(fid, c.GETATTR_BASIC))).qid == root
    entries = await client.listdir(*[b".."] * 5)
    assert {e.name for e in entries} >= {b"hello.txt", b"d"}


@case
async def symlinks_in_walks(client: Client, layout: Layout) -> None:
    for link in (b"abs", b"rel", b"hop1", b"self"):
        reply = await walk_qids(client, link, b"secret.txt")
        assert isinstance(reply, m.Rwalk) and len(reply.wqids) == 1, (link, reply)
        assert reply.wqids[0].type == c.QTSYMLINK
    reply = await walk_qids(client, b"d", b"up2", b"secret.txt")
    assert isinstance(reply, m.Rwalk) and len(reply.wqids) == 2
    for link in (b"abs", b"filelink", b"hop1"):
        fid = await client.walk(link)
        assert await client.error(m.Tlopen(fid, c.L_O_RDONLY)) == errno.ELOOP
        assert await client.error(m.Tread(fid, 0, 100)) == errno.EBADF
        assert await client.error(m.Treaddir(fid, 0, 1000)) == errno.EBADF
        assert await client.error(m.Txattrwalk(fid, client.fid(), b"user.x")) == errno.EOPNOTSUPP
        assert await client.error(m.Tsetattr(fid, c.SETATTR_MODE, 0o777, 0, 0, 0, 0, 0, 0, 0)) \
            == errno.EOPNOTSUPP
        assert await client.error(m.Tsetattr(fid, c.SETATTR_SIZE, 0, 0, 0, 0, 0, 0, 0, 0)) \
            == errno.EINVAL
        await client.ok(m.Tsetattr(fid, c.SETATTR_MTIME | c.SETATTR_MTIME_SET, 0, 0, 0, 0, 0, 0,
                                   12345, 0))
        assert os.lstat(layout.export / link.decode()).st_mtime == 12345
        # The node is the link itself: its attributes, never the target's.
        attr = await client.ok(m.Tgetattr(fid, c.GETATTR_BASIC))
        assert stat.S_ISLNK(attr.mode)


@case
async def symlinks_as_parents(client: Client, layout: Layout) -> None:
    for link in (b"abs", b"rel", b"hop1"):
        parent = await client.walk(link)
        hello = await client.walk(b"hello.txt")
        attempts = [
            m.Tlcreate(await client.walk(link), b"new", c.L_O_RDWR, 0o644, 0),
            m.Tmkdir(parent, b"newdir", 0o755, 0),
            m.Tsymlink(parent, b"newlink", b"x", 0),
            m.Tmknod(parent, b"newfifo", stat.S_IFIFO | 0o644, 0, 0, 0),
            m.Trenameat(ROOT, b"hello.txt", parent, b"moved"),
            m.Trenameat(parent, b"secret.txt", ROOT, b"stolen"),
            m.Trename(hello, parent, b"moved"),
            m.Tlink(parent, hello, b"hard"),
            m.Tunlinkat(parent, b"secret.txt", 0),
            m.Tunlinkat(parent, b"dir", c.AT_REMOVEDIR),
        ]
        for attempt in attempts:
            assert await client.error(attempt) == errno.ENOTDIR, attempt
        assert (layout.export / "hello.txt").exists()
        assert not (layout.export / "stolen").exists()


@case
async def client_made_symlinks(client: Client, layout: Layout) -> None:
    await client.ok(m.Tsymlink(ROOT, b"mine", os.fsencode(layout.outside), 0))
    await client.ok(m.Tsymlink(ROOT, b"mine-rel", b"../outside/secret.txt", 0))
    await client.ok(m.Tmkdir(ROOT, b"n", 0o755, 0))
    n = await client.walk(b"n")
    await client.ok(m.Tsymlink(n, b"deeper", b"../../outside", 0))
    reply = await walk_qids(client, b"n", b"deeper", b"dir", b"secret2.txt")
    assert isinstance(reply, m.Rwalk) and len(reply.wqids) == 2
    for name in (b"mine", b"mine-rel"):
        assert await client.error(m.Tlopen(await client.walk(name), c.L_O_RDWR)) == errno.ELOOP
        # Creating over a symlink never follows it.
        assert await client.error(m.Tlcreate(await client.walk(), name, c.L_O_RDWR | c.L_O_TRUNC,
                                             0o644, 0)) == errno.EEXIST
        assert await client.error(m.Tmkdir(ROOT, name, 0o755, 0)) == errno.EEXIST
    mine = await client.walk(b"mine")
    assert await client.error(m.Tmkdir(mine, b"x", 0o755, 0)) == errno.ENOTDIR
    # Renaming the link moves the link, not its target.
    await client.ok(m.Trenameat(ROOT, b"mine-rel", n, b"renamed"))
    assert os.readlink(layout.export / "n" / "renamed") == "../outside/secret.txt"
    # A hard link to the symlink is a link to the symlink.
    await client.ok(m.Tlink(ROOT, mine, b"mine-hard"))
    assert os.path.islink(layout.export / "mine-hard")


@case
async def names_with_slashes_and_dots(client: Client, layout: Layout) -> None:
    bad_names = [b"../outside/x", b"a/b", b"/tmp/x", b"..", b".", b"", b"x\0y", b"d/../../x"]
    hello = await client.walk(b"hello.txt")
    for name in bad_names:
        attempts = [
            m.Tlcreate(await client.walk(), name, c.L_O_RDWR, 0o644, 0),
            m.Tmkdir(ROOT, name, 0o755, 0),
            m.Tsymlink(ROOT, name, b"target", 0),
            m.Tmknod(ROOT, name, stat.S_IFIFO | 0o644, 0, 0, 0),
            m.Trenameat(ROOT, b"hello.txt", ROOT, name),
            m.Trenameat(ROOT, name, ROOT, b"stolen"),
            m.Trename(hello, ROOT, name),
            m.Tlink(ROOT, hello, name),
            m.Tunlinkat(ROOT, name, 0),
        ]
        if name not in (b"..", b"."):
            attempts.append(m.Twalk(ROOT, client.fid(), (name,)))
        for attempt in attempts:
            assert await client.error(attempt) == errno.EINVAL, attempt
    assert (layout.export / "hello.txt").read_bytes() == b"hello"
    long_name = b"x" * 256
    assert await client.error(m.Tmkdir(ROOT, long_name, 0o755, 0)) == errno.ENAMETOOLONG


@case
async def device_nodes(client: Client, layout: Layout) -> None:
    for kind in (stat.S_IFCHR, stat.S_IFBLK):
        assert await client.error(m.Tmknod(ROOT, b"dev", kind | 0o666, 1, 3, 0)) == errno.EPERM
    assert await client.error(m.Tmknod(ROOT, b"dev", 0o170000 | 0o666, 1, 3, 0)) == errno.EINVAL
    assert not (layout.export / "dev").exists()
    if (layout.export / "null").exists():
        fid = await client.walk(b"null")
        for flags in (c.L_O_RDONLY, c.L_O_RDWR, c.L_O_WRONLY):
            assert await client.error(m.Tlopen(fid, flags)) == errno.ENXIO


@case
async def fifos_and_sockets_never_opened(client: Client, layout: Layout) -> None:
    await client.ok(m.Tmknod(ROOT, b"sock", stat.S_IFSOCK | 0o644, 0, 0, 0))
    for name in (b"fifo", b"sock"):
        fid = await client.walk(name)
        with trio.fail_after(5):
            for flags in (c.L_O_RDONLY, c.L_O_WRONLY, c.L_O_RDWR, c.L_O_RDONLY | c.L_O_NONBLOCK):
                assert await client.error(m.Tlopen(fid, flags)) == errno.ENXIO
            assert await client.error(m.Tlcreate(await client.walk(), name, c.L_O_RDWR, 0o644,
                                                 0)) == errno.EEXIST


@case
async def other_anames(client: Client, layout: Layout) -> None:
    for aname in (b"/", b"/etc", b"..", os.fsencode(layout.outside), b"../outside",
                  os.fsencode(layout.export) + b"/..", os.fsencode(layout.base)):
        fid = client.fid()
        assert await client.error(m.Tattach(fid, c.NOFID, b"", aname, 0)) == errno.ENOENT
        assert await client.error(m.Tgetattr(fid, c.GETATTR_BASIC)) == errno.EBADF


@case
async def no_setuid_from_a_root_server(client: Client, layout: Layout) -> None:
    if os.geteuid() != 0:
        return
    fid = await client.walk()
    await client.ok(m.Tlcreate(fid, b"suid", c.L_O_RDWR, 0o6755, 0))
    await client.ok(m.Tmknod(ROOT, b"suid2", stat.S_IFREG | 0o4755, 0, 0, 0))
    await client.ok(m.Tsetattr(fid, c.SETATTR_MODE, 0o6777, 0, 0, 0, 0, 0, 0, 0))
    # A setuid file put there by the server qube's user stays out of the client's
    # reach as a setuid-root file: chown by a root server drops the bits.
    (layout.export / "theirs").write_bytes(b"")
    os.chown(layout.export / "theirs", 1000, 1000)
    os.chmod(layout.export / "theirs", 0o6755)
    theirs = await client.walk(b"theirs")
    await client.ok(m.Tsetattr(theirs, c.SETATTR_UID | c.SETATTR_GID, 0, 0, 0, 0, 0, 0, 0, 0))
    for name in ("suid", "suid2", "theirs"):
        mode = os.stat(layout.export / name).st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID), (name, oct(mode))


@case
async def remove_and_rename_through_stale_fids(client: Client, layout: Layout) -> None:
    fid = await client.walk(b"d", b"up2")
    # Swap what d/up2 is behind the fid's back: Tremove must not remove the new one.
    os.rename(layout.export / "d" / "up2", layout.export / "up2-moved")
    os.symlink("x", layout.export / "d" / "up2")
    assert await client.error(m.Tremove(fid)) == errno.ESTALE
    assert os.path.lexists(layout.export / "d" / "up2")


class Watch:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.before = layout.outside_state()
        self.inodes = layout.outside_inodes()
        self.inotify = Inotify([layout.base, layout.outside, layout.outside / "dir"])

    def check(self, client: Client, name: str) -> None:
        # The watch on the export's parent also reports on the export itself: that is allowed.
        events = [(mask, name) for mask, name in self.inotify.events() if name != b"export"]
        assert events == [], f"{name}: activity outside the export: {events}"
        assert self.layout.outside_state() == self.before, f"{name}: outside changed"
        self.inotify.events()  # our own look at outside above; the server is idle now
        assert self.layout.canary not in client.received, f"{name}: canary content leaked"
        leaked = self._qid_paths(client) & self.inodes
        assert not leaked, f"{name}: a reply named an inode outside: {leaked}"

    @staticmethod
    def _qid_paths(client: Client) -> set[int]:
        # Every 8-byte little-endian window: a superset of the qid paths sent.
        data = bytes(client.received)
        return {int.from_bytes(data[i:i + 8], "little") for i in range(len(data) - 7)}


@pytest.mark.parametrize("name", sorted(CASES))
async def test_hostile_case(tmp_path: Path, name: str) -> None:
    layout = make_layout(tmp_path)
    watch = Watch(layout)
    try:
        async with served(layout.export) as client:
            await CASES[name](client, layout)
        watch.check(client, name)
    finally:
        watch.inotify.close()


async def test_hostile_cases_against_the_command(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    watch = Watch(layout)
    try:
        async with subprocess_server(layout.export) as (client, process):
            for name in sorted(CASES):
                await CASES[name](client, layout)
                watch.check(client, name)
        assert process.returncode == 0
    finally:
        watch.inotify.close()


async def test_hostile_cases_against_an_unprivileged_command() -> None:
    """The same attacks on the server as run in a qube: uid 1000, export owned by it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the server as another user")
    check_user_can_run_the_server()
    base = Path(tempfile.mkdtemp(prefix="qsf-hostile-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        layout = make_layout(base)
        for path in [layout.export, *layout.export.rglob("*")]:
            os.chown(path, support.QUBE_UID, support.QUBE_GID, follow_symlinks=False)
        watch = Watch(layout)
        try:
            async with subprocess_server(layout.export, prefix=support.as_user([])) as (
                    client, process):
                for name in sorted(set(CASES) - {"no_setuid_from_a_root_server"}):
                    await CASES[name](client, layout)
                    watch.check(client, name)
            assert process.returncode == 0
        finally:
            watch.inotify.close()
    finally:
        shutil.rmtree(base)
