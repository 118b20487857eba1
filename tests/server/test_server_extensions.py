"""The qsf extensions (docs/PROTOCOL.md) against the real server: negotiation,
Tqsfreaddir, and Tqsfwatch events for changes made directly in the export."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio
from server_p9client import ROOT, Client, served

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_server import watcher as watcher_module


@pytest.fixture
def export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    root.mkdir()
    (root / "plain.txt").write_bytes(b"plain")
    (root / "tagged.txt").write_bytes(b"tagged")
    (root / "sub").mkdir()
    (root / "link").symlink_to("plain.txt")
    return root


async def _qsf_handshake(client: Client) -> None:
    reply = await client.reply(await client.send(m.Tversion(65536, c.VERSION_QSF), tag=c.NOTAG))
    assert reply == m.Rversion(65536, c.VERSION_QSF)
    client.msize = 65536
    await client.ok(m.Tattach(ROOT, c.NOFID, b"", b"", 0))


async def _qsf_listing(client: Client, *names: bytes) -> list[m.QsfDirent]:
    fid = await client.open(*names, flags=c.L_O_RDONLY | c.L_O_DIRECTORY)
    entries: list[m.QsfDirent] = []
    offset = 0
    while True:
        reply = await client.ok(m.Tqsfreaddir(fid, offset, 1000))  # a few entries a reply
        if not reply.entries:
            break
        entries.extend(reply.entries)
        offset = reply.entries[-1].offset
    await client.clunk(fid)
    return entries


async def _events(client: Client, until: set[tuple[int, bytes]]) -> list[m.QsfEvent]:
    """Events (long polls one after the other) until every (kind, name) in until came."""
    got: list[m.QsfEvent] = []
    with trio.fail_after(10):
        while until - {(event.kind, event.name) for event in got}:
            reply = await client.ok(m.Tqsfwatch(8192))
            assert reply.events
            got.extend(reply.events)
    return got


async def test_plain_version_has_no_extensions(export: Path) -> None:
    async with served(export) as client:
        fid = await client.open(flags=c.L_O_RDONLY | c.L_O_DIRECTORY)
        assert await client.error(m.Tqsfreaddir(fid, 0, 8192)) == errno.EOPNOTSUPP
        assert await client.error(m.Tqsfwatch(8192)) == errno.EOPNOTSUPP


async def test_server_without_extensions_declines(export: Path) -> None:
    async with served(export, handshake=False, extensions=False) as client:
        reply = await client.call(m.Tversion(65536, c.VERSION_QSF))
        assert reply == m.Rversion(65536, c.VERSION_9P2000L)


async def test_qsfreaddir_gives_attributes_and_xattr_presence(export: Path) -> None:
    os.setxattr(export / "tagged.txt", "user.colour", b"red")
    async with served(export, handshake=False) as client:
        await _qsf_handshake(client)
        entries = {entry.name: entry for entry in await _qsf_listing(client)}
        plain_listing = {entry.name: entry for entry in await client.listdir()}
        assert set(entries) == set(plain_listing) == {b".", b"..", b"plain.txt", b"tagged.txt",
                                                      b"sub", b"link"}
        for name, entry in entries.items():
            assert entry.qid == plain_listing[name].qid
            assert entry.type == plain_listing[name].type
            if name in (b".", b".."):
                assert entry.flags == 0
                continue
            assert entry.flags & c.QSF_DIRENT_ATTR
            st = os.lstat(export / os.fsdecode(name))
            assert entry.attr.mode == st.st_mode and entry.attr.size == st.st_size
            assert entry.attr.qid == entry.qid
            # The same attributes Tgetattr gives.
            fid = await client.walk(name)
            assert await client.ok(m.Tgetattr(fid, c.GETATTR_BASIC)) == entry.attr
            await client.clunk(fid)
        assert entries[b"tagged.txt"].flags & c.QSF_DIRENT_XATTRS
        assert not entries[b"plain.txt"].flags & c.QSF_DIRENT_XATTRS
        assert entries[b"link"].flags & c.QSF_DIRENT_XATTRS  # symlinks: ask the server


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can set trusted.* and security.*")
async def test_server_qube_namespaces_do_not_count_as_xattrs(export: Path) -> None:
    """A file with only security.* and trusted.* attributes (an SELinux label on
    every file of a Fedora server qube) is listed as having none: qsf-fuse does
    not show those namespaces, so its shortcut for files without any holds."""
    labelled, mixed = export / "labelled.txt", export / "mixed.txt"
    for path in (labelled, mixed):
        path.write_bytes(b"x")
        os.setxattr(path, "security.qsf-test", b"label")
        os.setxattr(path, "trusted.qsf-test", b"t")
    os.setxattr(mixed, "user.colour", b"red")
    async with served(export, handshake=False) as client:
        await _qsf_handshake(client)
        entries = {entry.name: entry for entry in await _qsf_listing(client)}
        assert not entries[b"labelled.txt"].flags & c.QSF_DIRENT_XATTRS
        assert entries[b"mixed.txt"].flags & c.QSF_DIRENT_XATTRS


async def test_watch_reports_changes_made_in_the_export(export: Path) -> None:
    async with served(export, handshake=False) as client:
        await _qsf_handshake(client)
        sub = await client.walk(b"sub")  # the client has seen sub: it is watched
        root_path = (await client.ok(m.Tgetattr(ROOT, c.GETATTR_BASIC))).qid.path
        sub_path = (await client.ok(m.Tgetattr(sub, c.GETATTR_BASIC))).qid.path

        (export / "sub" / "new").write_bytes(b"x")
        events = await _events(client, {(c.QSF_EV_CREATED, b"new"), (c.QSF_EV_CHANGED, b"new")})
        created = next(e for e in events if e.kind == c.QSF_EV_CREATED)
        assert created.dir == sub_path
        assert created.path == os.stat(export / "sub" / "new").st_ino

        os.chmod(export / "plain.txt", 0o600)
        events = await _events(client, {(c.QSF_EV_ATTRIB, b"plain.txt")})
        assert any(e.dir == root_path for e in events)

        os.rename(export / "sub" / "new", export / "moved")
        await _events(client, {(c.QSF_EV_MOVED_FROM, b"new"), (c.QSF_EV_MOVED_TO, b"moved")})

        os.unlink(export / "moved")
        await _events(client, {(c.QSF_EV_REMOVED, b"moved")})


async def test_watch_is_cancelled_by_flush(export: Path) -> None:
    async with served(export, handshake=False) as client:
        await _qsf_handshake(client)
        tag = await client.send(m.Tqsfwatch(8192))
        await trio.sleep(0.05)
        flush = await client.send(m.Tflush(tag))
        assert await client.reply(flush) == m.Rflush()
        assert tag not in client.pending  # no reply to the flushed poll
        await client.ok(m.Tgetattr(ROOT, c.GETATTR_BASIC))  # the session goes on


async def test_eof_ends_a_pending_watch(export: Path) -> None:
    # A client gone with its long poll unanswered: the connection still ends (the
    # server exited only after the client's grace, killed, under the fuzz proxy).
    with trio.fail_after(5):
        async with served(export, handshake=False) as client:
            await _qsf_handshake(client)
            await client.send(m.Tqsfwatch(8192))
            await trio.sleep(0.05)


async def test_watch_limit_ends_notification(export: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watcher_module, "DEFAULT_MAX_WATCHES", 1)
    async with served(export, handshake=False) as client:
        await _qsf_handshake(client)  # the root takes the only watch
        await client.walk(b"sub")
        reply = await client.ok(m.Tqsfwatch(8192))
        assert [e.kind for e in reply.events] == [c.QSF_EV_ENDED]


async def test_event_overflow_resets(export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watcher_module, "DEFAULT_MAX_EVENTS", 5)
    async with served(export, handshake=False) as client:
        await _qsf_handshake(client)
        for index in range(20):
            (export / f"f{index}").write_bytes(b"")
        await trio.sleep(0.1)
        reply = await client.ok(m.Tqsfwatch(8192))
        assert reply.events[0].kind == c.QSF_EV_RESET
