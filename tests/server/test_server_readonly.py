"""--read-only: every modifying operation and every open for writing fails with EROFS."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from server_p9client import ROOT, Client, served, subprocess_server

from qsf_p9 import constants as c
from qsf_p9 import messages as m


def make_export(base: Path) -> Path:
    export = base / "export"
    export.mkdir()
    (export / "file").write_bytes(b"data")
    (export / "dir").mkdir()
    os.setxattr(export / "file", "user.keep", b"1")
    return export


def snapshot(export: Path) -> list[tuple[str, int, int, int, bytes]]:
    state = []
    for path in sorted(export.rglob("*")):
        st = os.lstat(path)
        content = path.read_bytes() if path.is_file() else b""
        state.append((str(path), st.st_mode, st.st_mtime_ns, st.st_ctime_ns, content))
    return state


async def refuse_everything(client: Client) -> None:
    file_fid = await client.walk(b"file")
    dir_fid = await client.walk(b"dir")
    for flags in (c.L_O_WRONLY, c.L_O_RDWR, c.L_O_RDONLY | c.L_O_TRUNC,
                  c.L_O_RDONLY | c.L_O_APPEND, c.L_O_WRONLY | c.L_O_APPEND):
        assert await client.error(m.Tlopen(await client.walk(b"file"), flags)) == errno.EROFS
    attempts: list[m.Message] = [
        m.Tlcreate(await client.walk(), b"new", c.L_O_RDONLY, 0o644, 0),
        m.Tmkdir(ROOT, b"new", 0o755, 0),
        m.Tsymlink(ROOT, b"new", b"file", 0),
        m.Tmknod(ROOT, b"new", stat.S_IFIFO | 0o644, 0, 0, 0),
        m.Tlink(ROOT, file_fid, b"new"),
        m.Trename(file_fid, dir_fid, b"new"),
        m.Trenameat(ROOT, b"file", ROOT, b"new"),
        m.Tunlinkat(ROOT, b"file", 0),
        m.Tunlinkat(ROOT, b"dir", c.AT_REMOVEDIR),
        m.Tsetattr(file_fid, c.SETATTR_MODE, 0o777, 0, 0, 0, 0, 0, 0, 0),
        m.Tsetattr(file_fid, c.SETATTR_SIZE, 0, 0, 0, 0, 0, 0, 0, 0),
        m.Tsetattr(file_fid, c.SETATTR_UID | c.SETATTR_GID, 0, 0, 0, 0, 0, 0, 0, 0),
        m.Tsetattr(file_fid, c.SETATTR_MTIME, 0, 0, 0, 0, 0, 0, 0, 0),
        m.Txattrcreate(await client.walk(b"file"), b"user.new", 1, 0),
        m.Txattrcreate(await client.walk(b"file"), b"user.keep", 0, c.XATTR_REPLACE),
    ]
    for attempt in attempts:
        assert await client.error(attempt) == errno.EROFS, attempt
    removed = await client.walk(b"file")
    assert await client.error(m.Tremove(removed)) == errno.EROFS
    assert await client.error(m.Tclunk(removed)) == errno.EBADF  # Tremove clunks anyway
    # Reading still works.
    assert await client.read_file(b"file") == b"data"
    assert {e.name for e in await client.listdir()} == {b".", b"..", b"file", b"dir"}
    listing = client.fid()
    await client.ok(m.Txattrwalk(file_fid, listing, b"user.keep"))
    assert await client.read_all(listing) == b"1"
    reader = await client.open(b"file")
    assert (await client.ok(m.Tlock(reader, c.LOCK_TYPE_RDLCK, 0, 0, 0, 1, b""))).status \
        == c.LOCK_SUCCESS
    await client.ok(m.Tfsync(reader, 0))
    await client.ok(m.Tstatfs(ROOT))


async def test_read_only_in_process(tmp_path: Path) -> None:
    export = make_export(tmp_path)
    before = snapshot(export)
    async with served(export, read_only=True) as client:
        await refuse_everything(client)
    assert snapshot(export) == before
    assert os.getxattr(export / "file", "user.keep") == b"1"


async def test_read_only_command(tmp_path: Path) -> None:
    export = make_export(tmp_path)
    before = snapshot(export)
    async with subprocess_server(export, "--read-only") as (client, process):
        await refuse_everything(client)
    assert process.returncode == 0
    assert snapshot(export) == before
