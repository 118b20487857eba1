"""Every 9P2000.L operation against the real server on a temporary export."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from server_p9client import ROOT, P9Error, served

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_server.fs import Export


@pytest.fixture
def export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello world\n")
    (root / "sub").mkdir()
    (root / "sub" / "deep.txt").write_bytes(b"deep")
    return root


async def test_version_and_attach(export: Path) -> None:
    async with served(export, handshake=False) as client:
        reply = await client.reply(await client.send(m.Tversion(8192, b"9P2000.L"), tag=c.NOTAG))
        assert reply == m.Rversion(8192, b"9P2000.L")
        reply = await client.reply(await client.send(m.Tversion(1 << 30, b"9P2000.L"),
                                                     tag=c.NOTAG))
        assert reply == m.Rversion(c.MAX_MSIZE, b"9P2000.L")
        reply = await client.reply(await client.send(m.Tversion(8192, b"9P2000.u"), tag=c.NOTAG))
        assert reply == m.Rversion(8192, b"unknown")
        # No session after an unknown version.
        assert await client.error(m.Tattach(0, c.NOFID, b"", b"", 0)) == errno.EPROTO
        await client.handshake()
        assert await client.error(m.Tauth(5, b"", b"", 0)) == errno.ENOENT
        assert await client.error(m.Tattach(ROOT, c.NOFID, b"", b"", 0)) == errno.EBADF
        # aname may be the export's own path, nothing else.
        await client.ok(m.Tattach(7, c.NOFID, b"", os.fsencode(export), 0))
        qid = (await client.ok(m.Tgetattr(7, c.GETATTR_ALL))).qid
        assert qid == (await client.ok(m.Tgetattr(ROOT, c.GETATTR_ALL))).qid


async def test_tversion_resets_the_session(export: Path) -> None:
    async with served(export) as client:
        fid = await client.walk(b"hello.txt")
        reply = await client.reply(await client.send(m.Tversion(8192, b"9P2000.L"), tag=c.NOTAG))
        assert isinstance(reply, m.Rversion)
        assert await client.error(m.Tgetattr(fid, c.GETATTR_BASIC)) == errno.EBADF
        assert await client.error(m.Tgetattr(ROOT, c.GETATTR_BASIC)) == errno.EBADF


async def test_walk_clone_partial_and_in_place(export: Path) -> None:
    async with served(export) as client:
        clone = client.fid()
        assert (await client.ok(m.Twalk(ROOT, clone, ()))).wqids == ()
        reply = await client.ok(m.Twalk(ROOT, client.fid(), (b"sub", b"deep.txt")))
        assert [q.type for q in reply.wqids] == [c.QTDIR, c.QTFILE]
        assert reply.wqids[1].path == os.stat(export / "sub" / "deep.txt").st_ino
        # First name missing: Rlerror. A later one: the qids so far, newfid not made.
        assert await client.error(m.Twalk(ROOT, 50, (b"nope",))) == errno.ENOENT
        reply = await client.ok(m.Twalk(ROOT, 51, (b"sub", b"nope", b"x")))
        assert len(reply.wqids) == 1
        assert await client.error(m.Tclunk(51)) == errno.EBADF
        # Walking through a file stops there; from the file itself: ENOTDIR.
        assert len((await client.ok(m.Twalk(ROOT, 52, (b"hello.txt", b"x")))).wqids) == 1
        file_fid = await client.walk(b"hello.txt")
        assert await client.error(m.Twalk(file_fid, 53, (b"x",))) == errno.ENOTDIR
        # In place (fid == newfid), as Linux does for long paths.
        await client.ok(m.Twalk(clone, clone, (b"sub",)))
        reply = await client.ok(m.Twalk(clone, clone, (b"deep.txt",)))
        assert (await client.ok(m.Tgetattr(clone, c.GETATTR_BASIC))).size == 4
        # newfid in use.
        other = await client.walk()
        assert await client.error(m.Twalk(ROOT, other, (b"sub",))) == errno.EBADF
        # Names that are not one plain component.
        for name in (b"", b"a/b", b"/", b"a\0b"):
            assert await client.error(m.Twalk(ROOT, 54, (name,))) == errno.EINVAL
        # "." is the directory itself.
        reply = await client.ok(m.Twalk(ROOT, 55, (b"sub", b".", b".")))
        assert reply.wqids[0] == reply.wqids[1] == reply.wqids[2]


async def test_walk_dotdot_from_subdir_and_root(export: Path) -> None:
    async with served(export) as client:
        root_qid = (await client.ok(m.Tgetattr(ROOT, c.GETATTR_BASIC))).qid
        reply = await client.ok(m.Twalk(ROOT, client.fid(), (b"sub", b"..", b"..", b"..")))
        assert [q.path for q in reply.wqids[1:]] == [root_qid.path] * 3
        reply = await client.ok(m.Twalk(ROOT, client.fid(), (b"sub", b"..", b"sub")))
        assert reply.wqids[0] == reply.wqids[2]


async def test_read_write_create(export: Path) -> None:
    async with served(export) as client:
        assert await client.read_file(b"hello.txt") == b"hello world\n"
        await client.create(b"new.bin", b"x" * 100_000)
        assert (export / "new.bin").read_bytes() == b"x" * 100_000
        assert await client.read_file(b"new.bin") == b"x" * 100_000
        # Lcreate makes the fid the open file; the directory fid is gone.
        fid = await client.walk()
        reply = await client.ok(m.Tlcreate(fid, b"c.txt", c.L_O_WRONLY, 0o640, 0))
        assert reply.qid.type == c.QTFILE
        assert reply.qid.version != 0
        await client.ok(m.Twrite(fid, 3, b"abc"))
        attr = await client.ok(m.Tgetattr(fid, c.GETATTR_ALL))
        assert attr.size == 6 and stat.S_IMODE(attr.mode) == 0o640
        assert await client.error(m.Tread(fid, 0, 10)) == errno.EBADF  # write-only
        await client.clunk(fid)
        assert (export / "c.txt").read_bytes() == b"\0\0\0abc"
        # Lcreate of an existing name never opens it.
        assert await client.error(m.Tlcreate(await client.walk(), b"c.txt", c.L_O_RDWR,
                                             0o600, 0)) == errno.EEXIST
        # Append.
        fid = await client.open(b"c.txt", flags=c.L_O_WRONLY | c.L_O_APPEND)
        await client.ok(m.Twrite(fid, 0, b"Z"))
        assert (export / "c.txt").read_bytes() == b"\0\0\0abcZ"
        # Read on a directory.
        fid = await client.open(flags=c.L_O_RDONLY)
        assert await client.error(m.Tread(fid, 0, 10)) == errno.EISDIR
        # Opening twice.
        assert await client.error(m.Tlopen(fid, c.L_O_RDONLY)) == errno.EBADF
        # Directories cannot be opened for writing.
        assert await client.error(m.Tlopen(await client.walk(b"sub"), c.L_O_RDWR)) \
            == errno.EISDIR


async def test_qid_version_changes_with_data(export: Path) -> None:
    async with served(export) as client:
        fid = await client.open(b"hello.txt", flags=c.L_O_RDWR)
        before = (await client.ok(m.Tgetattr(fid, c.GETATTR_BASIC))).qid
        await client.ok(m.Twrite(fid, 100, b"more"))
        after = (await client.ok(m.Tgetattr(fid, c.GETATTR_BASIC))).qid
        assert before.path == after.path and before.version != after.version
        assert 0 not in (before.version, after.version)


async def test_readdir_stable_offsets(export: Path) -> None:
    for index in range(300):
        (export / f"file-{index:04d}-{'n' * 40}").write_bytes(b"")
    async with served(export) as client:
        entries = await client.listdir()
        names = [e.name for e in entries]
        assert names[:2] == [b".", b".."]
        assert sorted(names[2:]) == sorted(os.fsencode(n) for n in os.listdir(export))
        root_qid = (await client.ok(m.Tgetattr(ROOT, c.GETATTR_BASIC))).qid
        assert entries[1].qid.path == root_qid.path  # the root's .. is the root
        kinds = {e.name: e.type for e in entries}
        assert kinds[b"sub"] == c.DT_DIR and kinds[b"hello.txt"] == c.DT_REG
        # Resuming from any returned offset continues exactly after that entry,
        # even with small counts and entries added in between.
        fid = await client.open(flags=c.L_O_RDONLY | c.L_O_DIRECTORY)
        first = await client.ok(m.Treaddir(fid, 0, 200))
        (export / "added-later").write_bytes(b"")
        seen = list(first.entries)
        while True:
            reply = await client.ok(m.Treaddir(fid, seen[-1].offset, 150))
            if not reply.entries:
                break
            seen.extend(reply.entries)
        assert [e.name for e in seen] == names
        again = await client.ok(m.Treaddir(fid, entries[10].offset, 100))
        assert again.entries[0].name == names[11]
        # A count too small for one entry is an error, not an endless empty reply.
        assert await client.error(m.Treaddir(fid, 0, 10)) == errno.EINVAL
        # Readdir of a sub directory: its .. is the root.
        sub = await client.listdir(b"sub")
        assert sub[1].qid.path == root_qid.path


async def test_getattr_setattr(export: Path) -> None:
    async with served(export) as client:
        fid = await client.walk(b"hello.txt")
        attr = await client.ok(m.Tgetattr(fid, c.GETATTR_ALL))
        st = os.stat(export / "hello.txt")
        assert (attr.mode, attr.uid, attr.gid, attr.size, attr.nlink) == (
            st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink)
        assert attr.mtime_sec * 10**9 + attr.mtime_nsec == st.st_mtime_ns
        await client.ok(m.Tsetattr(fid, c.SETATTR_MODE | c.SETATTR_CTIME, 0o600, 0, 0, 0,
                                   0, 0, 0, 0))
        assert stat.S_IMODE(os.stat(export / "hello.txt").st_mode) == 0o600
        await client.ok(m.Tsetattr(fid, c.SETATTR_SIZE, 0, 0, 0, 5, 0, 0, 0, 0))
        assert (export / "hello.txt").read_bytes() == b"hello"
        await client.ok(m.Tsetattr(fid, c.SETATTR_ATIME | c.SETATTR_ATIME_SET | c.SETATTR_MTIME
                                   | c.SETATTR_MTIME_SET, 0, 0, 0, 0, 1000, 5, 2000, 7))
        st = os.stat(export / "hello.txt")
        assert (st.st_atime_ns, st.st_mtime_ns) == (1000 * 10**9 + 5, 2000 * 10**9 + 7)
        await client.ok(m.Tsetattr(fid, c.SETATTR_MTIME, 0, 0, 0, 0, 0, 0, 0, 0))
        assert os.stat(export / "hello.txt").st_mtime > 2000
        if os.geteuid() == 0:
            await client.ok(m.Tsetattr(fid, c.SETATTR_UID | c.SETATTR_GID, 0, 1234, 4321,
                                       0, 0, 0, 0, 0))
            st = os.stat(export / "hello.txt")
            assert (st.st_uid, st.st_gid) == (1234, 4321)


async def test_setattr_getattr_on_unlinked_open_file(export: Path) -> None:
    async with served(export) as client:
        fid = await client.open(b"hello.txt", flags=c.L_O_RDWR)
        await client.ok(m.Tunlinkat(ROOT, b"hello.txt", 0))
        assert not (export / "hello.txt").exists()
        await client.ok(m.Tsetattr(fid, c.SETATTR_SIZE, 0, 0, 0, 3, 0, 0, 0, 0))
        await client.ok(m.Tsetattr(fid, c.SETATTR_MODE, 0o400, 0, 0, 0, 0, 0, 0, 0))
        attr = await client.ok(m.Tgetattr(fid, c.GETATTR_ALL))
        assert attr.size == 3 and attr.nlink == 0 and stat.S_IMODE(attr.mode) == 0o400
        assert bytes((await client.ok(m.Tread(fid, 0, 100))).data) == b"hel"


async def test_names_mkdir_symlink_mknod_link_rename_unlink(export: Path) -> None:
    async with served(export) as client:
        reply = await client.ok(m.Tmkdir(ROOT, b"d", 0o750, 0))
        assert reply.qid.type == c.QTDIR
        assert stat.S_IMODE(os.stat(export / "d").st_mode) == 0o750
        reply = await client.ok(m.Tsymlink(ROOT, b"l", b"../../etc/passwd", 0))
        assert reply.qid.type == c.QTSYMLINK
        assert os.readlink(export / "l") == "../../etc/passwd"
        fid = await client.walk(b"l")
        assert (await client.ok(m.Treadlink(fid))).target == b"../../etc/passwd"
        assert await client.error(m.Treadlink(await client.walk(b"d"))) == errno.EINVAL
        await client.ok(m.Tmknod(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, 0, 0))
        assert stat.S_ISFIFO(os.lstat(export / "fifo").st_mode)
        await client.ok(m.Tmknod(ROOT, b"sock", stat.S_IFSOCK | 0o600, 0, 0, 0))
        assert stat.S_ISSOCK(os.lstat(export / "sock").st_mode)
        target = await client.walk(b"hello.txt")
        await client.ok(m.Tlink(ROOT, target, b"hard"))
        assert os.stat(export / "hard").st_ino == os.stat(export / "hello.txt").st_ino
        dfid = await client.walk(b"d")
        await client.ok(m.Trenameat(ROOT, b"hard", dfid, b"moved"))
        assert (export / "d" / "moved").read_bytes() == b"hello world\n"
        await client.ok(m.Tunlinkat(dfid, b"moved", 0))
        assert await client.error(m.Tunlinkat(ROOT, b"d", 0)) == errno.EISDIR
        await client.ok(m.Tunlinkat(ROOT, b"d", c.AT_REMOVEDIR))
        assert not (export / "d").exists()
        # Trename (fid based fallback) and Tremove.
        fid = await client.walk(b"sub", b"deep.txt")
        await client.ok(m.Trename(fid, ROOT, b"shallow.txt"))
        assert (export / "shallow.txt").read_bytes() == b"deep"
        await client.ok(m.Tremove(fid))
        assert not (export / "shallow.txt").exists()
        assert await client.error(m.Tclunk(fid)) == errno.EBADF  # remove clunked it
        # Tremove of the root fails, and still clunks.
        root2 = await client.walk()
        assert await client.error(m.Tremove(root2)) == errno.EBUSY
        assert await client.error(m.Tclunk(root2)) == errno.EBADF


async def test_statfs_fsync(export: Path) -> None:
    async with served(export) as client:
        reply = await client.ok(m.Tstatfs(ROOT))
        vfs = os.statvfs(export)
        assert reply.bsize == vfs.f_bsize and reply.namelen == vfs.f_namemax
        fid = await client.open(b"hello.txt", flags=c.L_O_RDWR)
        await client.ok(m.Tfsync(fid, 0))
        await client.ok(m.Tfsync(fid, 1))
        assert await client.error(m.Tfsync(ROOT, 0)) == errno.EBADF


async def test_xattrs(export: Path) -> None:
    async with served(export) as client:
        fid = await client.walk(b"hello.txt")
        set_fid = await client.walk(b"hello.txt")
        value = b"v" * 3000  # ext4 keeps a value within one block
        await client.ok(m.Txattrcreate(set_fid, b"user.test", len(value), 0))
        await client.ok(m.Twrite(set_fid, 0, value[:1000]))
        await client.ok(m.Twrite(set_fid, 1000, value[1000:]))
        await client.clunk(set_fid)
        assert os.getxattr(export / "hello.txt", "user.test") == value
        get_fid = client.fid()
        assert (await client.ok(m.Txattrwalk(fid, get_fid, b"user.test"))).size == len(value)
        assert await client.read_all(get_fid) == value
        list_fid = client.fid()
        size = (await client.ok(m.Txattrwalk(fid, list_fid, b""))).size
        listing = await client.read_all(list_fid)
        assert len(listing) == size and b"user.test\0" in listing
        assert await client.error(m.Txattrwalk(fid, client.fid(), b"user.nope")) \
            == errno.ENODATA
        # A short value fails at clunk, which still frees the fid.
        short = await client.walk(b"hello.txt")
        await client.ok(m.Txattrcreate(short, b"user.short", 10, 0))
        await client.ok(m.Twrite(short, 0, b"abc"))
        assert await client.error(m.Tclunk(short)) == errno.EINVAL
        assert await client.error(m.Tclunk(short)) == errno.EBADF
        assert "user.short" not in os.listxattr(export / "hello.txt")
        # Bounds and namespaces.
        big = await client.walk(b"hello.txt")
        assert await client.error(m.Txattrcreate(big, b"user.big", 65537, 0)) == errno.E2BIG
        assert await client.error(m.Txattrcreate(big, b"security.capability", 4, 0)) \
            == errno.EPERM
        assert await client.error(m.Txattrcreate(big, b"trusted.x", 4, 0)) == errno.EPERM
        # XATTR_CREATE on an existing name fails at clunk.
        again = await client.walk(b"hello.txt")
        await client.ok(m.Txattrcreate(again, b"user.test", 1, c.XATTR_CREATE))
        await client.ok(m.Twrite(again, 0, b"x"))
        assert await client.error(m.Tclunk(again)) == errno.EEXIST
        # Zero-length create removes.
        remove = await client.walk(b"hello.txt")
        await client.ok(m.Txattrcreate(remove, b"user.test", 0, c.XATTR_REPLACE))
        await client.clunk(remove)
        assert "user.test" not in os.listxattr(export / "hello.txt")


async def test_locks_never_block(export: Path) -> None:
    async with served(export) as client:
        first = await client.open(b"hello.txt", flags=c.L_O_RDWR)
        second = await client.open(b"hello.txt", flags=c.L_O_RDWR)
        lock = m.Tlock(first, c.LOCK_TYPE_WRLCK, 0, 0, 10, 1, b"client")
        assert (await client.ok(lock)).status == c.LOCK_SUCCESS
        blocked = m.Tlock(second, c.LOCK_TYPE_RDLCK, c.LOCK_FLAGS_BLOCK, 5, 10, 2, b"client")
        assert (await client.ok(blocked)).status == c.LOCK_BLOCKED
        held = await client.ok(m.Tgetlock(second, c.LOCK_TYPE_RDLCK, 0, 0, 2, b"client"))
        assert (held.type, held.start, held.length) == (c.LOCK_TYPE_WRLCK, 0, 10)
        free = await client.ok(m.Tgetlock(second, c.LOCK_TYPE_RDLCK, 20, 5, 2, b"client"))
        assert free.type == c.LOCK_TYPE_UNLCK
        await client.ok(m.Tlock(first, c.LOCK_TYPE_UNLCK, 0, 0, 10, 1, b"client"))
        assert (await client.ok(blocked)).status == c.LOCK_SUCCESS
        # Closing the fid releases its locks.
        await client.clunk(second)
        assert (await client.ok(lock)).status == c.LOCK_SUCCESS
        assert await client.error(m.Tlock(first, 7, 0, 0, 0, 1, b"")) == errno.EINVAL
        assert await client.error(m.Tlock(ROOT, c.LOCK_TYPE_RDLCK, 0, 0, 0, 1, b"")) \
            == errno.EBADF


async def test_unknown_and_malformed_messages_keep_the_connection(export: Path) -> None:
    async with served(export) as client:
        # Topen (9P2000, type 112) is not 9P2000.L; an unknown type 200 neither.
        for message_type in (112, 200, 6):
            await client.send_raw(bytes([11, 0, 0, 0, message_type, 9, 0]) + b"\0" * 4)
            tag, reply = await client.receive()
            assert tag == 9 and isinstance(reply, m.Rlerror)
        # A Tread with a body too short: Rlerror on its tag.
        await client.send_raw(bytes([10, 0, 0, 0, c.TREAD, 4, 0, 1, 2, 3]))
        tag, reply = await client.receive()
        assert tag == 4 and reply == m.Rlerror(errno.EINVAL)
        assert await client.read_file(b"hello.txt") == b"hello world\n"


async def test_clunk_unknown_and_errors(export: Path) -> None:
    async with served(export) as client:
        assert await client.error(m.Tclunk(999)) == errno.EBADF
        assert await client.error(m.Tgetattr(999, 0)) == errno.EBADF
        with pytest.raises(P9Error) as caught:
            await client.walk(b"missing")
        assert caught.value.errno == errno.ENOENT


def test_read_cached(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abcdef")
    fd = os.open(path, os.O_RDONLY)

    def cached(count: int, offset: int) -> bytes | None:
        data = Export.read_cached(fd, count, offset)
        return None if data is None else bytes(data)

    try:
        assert cached(4, 0) == b"abcd"
        assert cached(100, 2) == b"cdef"  # short at the end of the file
        assert cached(100, 50) == b""
        assert cached(100, 1 << 63) == b""
    finally:
        os.close(fd)
