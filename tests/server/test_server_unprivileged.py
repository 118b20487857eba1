"""qsf-server as an ordinary user (uid 1000, as in a qube): permission errors as the kernel's.

Two identical exports hold files of other owners and closed modes. On one,
each operation is done directly by uid 1000 (a small script run through
setpriv), recording the errno the host kernel gives; on the other, the same
operation goes through `python -m qsf_server` run as uid 1000. The errnos
must be the same, EACCES and EPERM alike, and so must the successes.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import support
from server_p9client import ROOT, Client, check_user_can_run_the_server, subprocess_server

from qsf_p9 import constants as c
from qsf_p9 import messages as m

UID, GID = support.QUBE_UID, support.QUBE_GID
OTHER_UID = UID + 1

# name -> Python statement run by uid 1000 in the export (cwd); errno 0 if it succeeds.
DIRECT = {
    "open_root600": "os.close(os.open('root600', os.O_RDONLY))",
    "write_root644": "os.close(os.open('root644', os.O_WRONLY))",
    "chmod_root644": "os.chmod('root644', 0o777)",
    "chown_mine": "os.chown('mine444', 0, 0)",
    "utime_set_root644": "os.utime('root644', ns=(10**9, 10**9))",
    "utime_now_root644": "os.utime('root644')",
    "truncate_root644": "os.truncate('root644', 0)",
    "create_in_rootdir":
        "os.close(os.open('rootdir/new', os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644))",
    "mkdir_in_rootdir": "os.mkdir('rootdir/new', 0o755)",
    "unlink_in_rootdir": "os.unlink('rootdir/inner')",
    "rename_out_of_rootdir": "os.rename('rootdir/inner', 'stolen')",
    "walk_into_closed": "os.lstat('closed/x')",
    "list_closed": "os.listdir('closed')",
    "write_mine444": "os.close(os.open('mine444', os.O_WRONLY))",
    "unlink_sticky_other": "os.unlink('sticky/other')",
    "rename_sticky_other": "os.rename('sticky/other', 'sticky/o2')",
    "setxattr_root644": "os.setxattr('root644', 'user.x', b'1')",
    "link_root600": "os.link('root600', 'hard')",
    "mkfifo_ok": "os.mkfifo('fifo1', 0o644)",
    "create_ok": "os.close(os.open('new.txt', os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644))",
    "chmod_mine_ok": "os.chmod('mine444', 0o400)",
}

SCRIPT = """
import json, os, sys
os.chdir(sys.argv[1])
results = {}
for name, statement in json.loads(sys.argv[2]).items():
    try:
        exec(statement)
        results[name] = 0
    except OSError as error:
        results[name] = error.errno
print(json.dumps(results))
"""


def make_export(base: Path) -> Path:
    export = base / "export"
    export.mkdir()
    (export / "root600").write_bytes(b"secret")
    os.chmod(export / "root600", 0o600)
    (export / "root644").write_bytes(b"public")
    os.chmod(export / "root644", 0o644)
    (export / "rootdir").mkdir(mode=0o755)
    (export / "rootdir" / "inner").write_bytes(b"x")
    (export / "closed").mkdir()
    (export / "closed" / "x").write_bytes(b"x")
    os.chown(export / "closed", UID, GID)
    os.chmod(export / "closed", 0)
    (export / "mine444").write_bytes(b"mine")
    os.chown(export / "mine444", UID, GID)
    os.chmod(export / "mine444", 0o444)
    (export / "sticky").mkdir()
    os.chmod(export / "sticky", 0o1777)
    (export / "sticky" / "other").write_bytes(b"x")
    os.chown(export / "sticky" / "other", OTHER_UID, OTHER_UID)
    os.chown(export, UID, GID)
    os.chmod(export, 0o755)
    return export


async def server_errno(client: Client, name: str) -> int:
    """Do case `name` through 9P; the errno of its failure, 0 if it succeeds."""

    async def walk(*names: bytes) -> int:
        return await client.walk(*names)

    async def setattr_(fid: int, valid: int, mode: int = 0, uid: int = 0, gid: int = 0,
                       size: int = 0, atime: int = 0, mtime: int = 0) -> m.Message:
        return m.Tsetattr(fid, valid, mode, uid, gid, size, atime, 0, mtime, 0)

    operations: dict[str, Callable[[], Awaitable[m.Message]]] = {
        "open_root600": lambda: _msg(walk(b"root600"), lambda f: m.Tlopen(f, c.L_O_RDONLY)),
        "write_root644": lambda: _msg(walk(b"root644"), lambda f: m.Tlopen(f, c.L_O_WRONLY)),
        "chmod_root644": lambda: _amsg(walk(b"root644"),
                                       lambda f: setattr_(f, c.SETATTR_MODE, mode=0o777)),
        "chown_mine": lambda: _amsg(walk(b"mine444"),
                                    lambda f: setattr_(f, c.SETATTR_UID | c.SETATTR_GID)),
        "utime_set_root644": lambda: _amsg(walk(b"root644"), lambda f: setattr_(
            f, c.SETATTR_ATIME | c.SETATTR_ATIME_SET | c.SETATTR_MTIME | c.SETATTR_MTIME_SET,
            atime=1, mtime=1)),
        "utime_now_root644": lambda: _amsg(walk(b"root644"), lambda f: setattr_(
            f, c.SETATTR_ATIME | c.SETATTR_MTIME)),
        "truncate_root644": lambda: _amsg(walk(b"root644"),
                                          lambda f: setattr_(f, c.SETATTR_SIZE, size=0)),
        "create_in_rootdir": lambda: _msg(walk(b"rootdir"), lambda f: m.Tlcreate(
            f, b"new", c.L_O_RDWR, 0o644, GID)),
        "mkdir_in_rootdir": lambda: _msg(walk(b"rootdir"),
                                         lambda f: m.Tmkdir(f, b"new", 0o755, GID)),
        "unlink_in_rootdir": lambda: _msg(walk(b"rootdir"),
                                          lambda f: m.Tunlinkat(f, b"inner", 0)),
        "rename_out_of_rootdir": lambda: _msg(walk(b"rootdir"), lambda f: m.Trenameat(
            f, b"inner", ROOT, b"stolen")),
        "walk_into_closed": lambda: _msg(walk(b"closed"),
                                         lambda f: m.Twalk(f, client.fid(), (b"x",))),
        "list_closed": lambda: _msg(walk(b"closed"),
                                    lambda f: m.Tlopen(f, c.L_O_RDONLY | c.L_O_DIRECTORY)),
        "write_mine444": lambda: _msg(walk(b"mine444"), lambda f: m.Tlopen(f, c.L_O_WRONLY)),
        "unlink_sticky_other": lambda: _msg(walk(b"sticky"),
                                            lambda f: m.Tunlinkat(f, b"other", 0)),
        "rename_sticky_other": lambda: _msg(walk(b"sticky"), lambda f: m.Trenameat(
            f, b"other", f, b"o2")),
        "setxattr_root644": lambda: set_xattr(client, b"root644"),
        "link_root600": lambda: _msg(walk(b"root600"), lambda f: m.Tlink(ROOT, f, b"hard")),
        "mkfifo_ok": lambda: _msg(walk(), lambda f: m.Tmknod(f, b"fifo1", stat.S_IFIFO | 0o644,
                                                            0, 0, GID)),
        "create_ok": lambda: _msg(walk(), lambda f: m.Tlcreate(f, b"new.txt", c.L_O_RDWR,
                                                              0o644, GID)),
        "chmod_mine_ok": lambda: _amsg(walk(b"mine444"),
                                       lambda f: setattr_(f, c.SETATTR_MODE, mode=0o400)),
    }

    async def _msg(fid_coroutine: Awaitable[int], make: Callable[[int], m.Message]) -> m.Message:
        return await client.call(make(await fid_coroutine))

    async def _amsg(fid_coroutine: Awaitable[int],
                    make: Callable[[int], Awaitable[m.Message]]) -> m.Message:
        return await client.call(await make(await fid_coroutine))

    reply = await operations[name]()
    return reply.ecode if isinstance(reply, m.Rlerror) else 0


async def set_xattr(client: Client, name: bytes) -> m.Message:
    fid = await client.walk(name)
    reply = await client.call(m.Txattrcreate(fid, b"user.x", 1, 0))
    if isinstance(reply, m.Rlerror):
        return reply
    await client.ok(m.Twrite(fid, 0, b"1"))
    return await client.call(m.Tclunk(fid))


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A temporary directory uid 1000 can reach (pytest's tmp_path is root-only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give files to several owners")
    base = Path(tempfile.mkdtemp(prefix="qsf-unpriv-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


async def test_permission_errors_match_the_kernel(public_tmp: Path) -> None:
    check_user_can_run_the_server()
    (public_tmp / "direct").mkdir()
    (public_tmp / "served").mkdir()
    direct_export = make_export(public_tmp / "direct")
    served_export = make_export(public_tmp / "served")
    run = subprocess.run(
        support.as_user([sys.executable, "-c", SCRIPT, str(direct_export), json.dumps(DIRECT)]),
        capture_output=True, check=True)
    expected = json.loads(run.stdout)
    # The cases mean something: most fail, with both EACCES and EPERM, some succeed.
    assert {0, 1, 13} <= set(expected.values()), expected
    got = {}
    async with subprocess_server(served_export, prefix=support.as_user([])) as (client, process):
        for name in DIRECT:
            got[name] = await server_errno(client, name)
    assert process.returncode == 0
    assert got == expected
    # What the server made belongs to uid 1000, like what the user made directly.
    assert os.stat(served_export / "new.txt").st_uid == UID
    assert os.stat(served_export / "fifo1").st_uid == UID
