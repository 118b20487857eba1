"""The fid table: reference counts (the CVE-2021-20181 class), limits, buffered memory."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from server_gate import GatedExport, wait_until
from server_p9client import ROOT, served

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_server import fs
from qsf_server.fids import Fid, FidTable
from qsf_server.fs import Export


def make_export(base: Path) -> Path:
    export = base / "export"
    export.mkdir()
    (export / "file").write_bytes(b"0123456789" * 1000)
    return export


def path_fid(tmp_path: Path) -> Fid:
    fd = os.open(tmp_path, os.O_PATH)
    return Fid(fd, os.fstat(fd), None)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_clunk_while_held_closes_after_the_last_user(tmp_path: Path) -> None:
    table = FidTable(limit=10)
    fid = path_fid(tmp_path)
    fd = fid.fd
    assert fd is not None
    table.add(1, fid)
    with table.hold(1) as (held,), table.hold(1):
        table.remove(1)  # Tclunk detaches at once...
        assert 1 not in table
        assert is_open(fd) and not held.closed  # ...but the fd lives while used
    assert fid.closed and not is_open(fd)


def test_replace_detaches_the_old_fid(tmp_path: Path) -> None:
    table = FidTable(limit=10)
    old, new = path_fid(tmp_path), path_fid(tmp_path)
    table.add(1, old)
    with table.hold(1):
        table.replace(1, new)
        assert table.get(1) is new and not old.closed
    assert old.closed and not new.closed
    table.clear()
    assert new.closed and len(table) == 0


def test_limits(tmp_path: Path) -> None:
    table = FidTable(limit=2, memory_limit=100)
    table.add(1, path_fid(tmp_path))
    with pytest.raises(OSError) as caught:
        table.add(1, path_fid(tmp_path))
    assert caught.value.errno == errno.EBADF
    big = Fid(None, None, None, xattr_data=b"x" * 101, memory=101)
    with pytest.raises(OSError) as caught:
        table.add(2, big)
    assert caught.value.errno == errno.ENOMEM
    table.add(2, Fid(None, None, None, xattr_data=b"x" * 60, memory=60))
    with pytest.raises(OSError) as caught:
        table.add(3, path_fid(tmp_path))
    assert caught.value.errno == errno.EMFILE
    first = table.get(1)
    with pytest.raises(OSError) as caught:
        table.charge(first, 41)
    assert caught.value.errno == errno.ENOMEM
    table.charge(first, 40)
    assert table.memory == 100
    table.remove(2)
    assert table.memory == 40
    with pytest.raises(OSError) as caught:
        table.get(2)
    assert caught.value.errno == errno.EBADF


async def test_clunk_during_a_read_in_a_thread(tmp_path: Path) -> None:
    gated = GatedExport(make_export(tmp_path))
    try:
        async with served(gated.path, export=gated) as client:
            fid = await client.open(b"file")
            connection = client.connection  # type: ignore[attr-defined]
            held = connection.session.fids.get(fid)
            read_tag = await client.send(m.Tread(fid, 0, 4))
            await wait_until(lambda: gated.waiting == 1)
            await client.clunk(fid)  # answered while the read still uses the fd
            assert not held.closed and held.open_fd is not None
            assert await client.error(m.Tread(fid, 0, 4)) == errno.EBADF
            # A new fid under the same number is another file, not the old fd.
            await client.ok(m.Twalk(ROOT, fid, ()))
            gated.gate.set()
            assert bytes((await client.reply(read_tag)).data) == b"0123"
            assert held.closed
    finally:
        gated.close()


async def test_buffered_memory_is_bounded(tmp_path: Path) -> None:
    export = make_export(tmp_path)
    (export / "many").mkdir()
    for index in range(100):
        (export / "many" / f"{index:03d}").write_bytes(b"")
    os.setxattr(export / "file", "user.big", b"v" * 3000)
    async with served(export, max_buffered=8000) as client:
        big = await client.open(b"many", flags=c.L_O_RDONLY | c.L_O_DIRECTORY)
        assert await client.error(m.Treaddir(big, 0, 8000)) == errno.ENOMEM
        small = await client.listdir()  # a small listing still fits
        assert [e.name for e in small][2:] in ([b"file", b"many"], [b"many", b"file"])
        holders = []
        for _ in range(2):
            holder = client.fid()
            await client.ok(m.Txattrwalk(ROOT, holder, b""))
            value = client.fid()
            await client.ok(m.Txattrwalk(await client.walk(b"file"), value, b"user.big"))
            holders.append(value)
        assert await client.error(m.Txattrwalk(await client.walk(b"file"), client.fid(),
                                               b"user.big")) == errno.ENOMEM
        await client.clunk(holders[0])  # clunking gives the memory back
        await client.ok(m.Txattrwalk(await client.walk(b"file"), client.fid(), b"user.big"))
        assert await client.error(m.Txattrcreate(await client.walk(b"file"), b"user.x", 9000,
                                                 0)) == errno.ENOMEM


async def test_walk_depth_is_bounded(tmp_path: Path) -> None:
    export = tmp_path / "export"
    (export / Path(*["d"] * 40)).mkdir(parents=True)
    shallow = Export(str(export), max_depth=33)
    try:
        async with served(export, export=shallow) as client:
            fid = await client.walk()
            await client.ok(m.Twalk(fid, fid, (b"d",) * 16))
            await client.ok(m.Twalk(fid, fid, (b"d",) * 16))
            reply = await client.ok(m.Twalk(fid, client.fid(), (b"d",) * 2))
            assert len(reply.wqids) == 1  # the 34th level is refused
            await client.ok(m.Twalk(fid, fid, (b"d",)))
            assert await client.error(m.Twalk(fid, client.fid(), (b"d",))) == errno.ENAMETOOLONG
            # `..` is still fine from there.
            await client.ok(m.Twalk(fid, fid, (b"..", b"..")))
            await client.ok(m.Twalk(fid, fid, (b"d",)))
    finally:
        shallow.close()
    assert fs.MAX_DEPTH >= 2048  # the default: deeper than any path can name
