"""The qsf extensions to 9P2000.L (docs/PROTOCOL.md), served only in a session
negotiated with version "9P2000.L.qsf1": Tqsfreaddir (a listing with every
entry's attributes and whether it has extended attributes) and Tqsfwatch (a
long poll for change events from the session's Watcher).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING, Final

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_p9.codec import QSF_DIRENT_OVERHEAD, QSF_EVENT_OVERHEAD, RREAD_OVERHEAD
from qsf_p9.messages import Message, QsfDirent

from . import fs, paging
from .fs import O_PATH_FLAGS

if TYPE_CHECKING:
    from .session import Session

# About what one listed entry costs in memory, besides its name.
_ENTRY_MEMORY: Final = 600


def attributes(qid: m.Qid, st: os.stat_result) -> m.Rgetattr:
    """The Rgetattr of a file from its lstat/fstat."""
    return m.Rgetattr(
        valid=c.GETATTR_BASIC, qid=qid, mode=st.st_mode, uid=st.st_uid,
        gid=st.st_gid, nlink=st.st_nlink, rdev=st.st_rdev, size=st.st_size,
        blksize=st.st_blksize, blocks=st.st_blocks,
        atime_sec=int(st.st_atime_ns // 1_000_000_000),
        atime_nsec=st.st_atime_ns % 1_000_000_000,
        mtime_sec=int(st.st_mtime_ns // 1_000_000_000),
        mtime_nsec=st.st_mtime_ns % 1_000_000_000,
        ctime_sec=int(st.st_ctime_ns // 1_000_000_000),
        ctime_nsec=st.st_ctime_ns % 1_000_000_000,
        btime_sec=0, btime_nsec=0, gen=0, data_version=0,
    )


# The server qube's own namespaces (SELinux labels, capabilities): a qsf client
# does not show them, so they do not count as "has extended attributes".
CLIENT_XATTR_EXCLUDED: Final = ("security.", "trusted.")
_NO_ATTR: Final = m.Rgetattr(0, m.Qid(0, 0, 0), *(0,) * 18)


def list_directory_plus(open_fd: int) -> list[tuple[bytes, os.stat_result | None, bool]]:
    """Each entry of open directory open_fd with its lstat and whether it has
    extended attributes outside security.* and trusted.* (True also when that
    cannot be told: then the client asks).

    Runs in a worker thread. Each entry is opened O_PATH|O_NOFOLLOW relative to
    the directory (never followed) to list its attributes through its descriptor.
    """
    out: list[tuple[bytes, os.stat_result | None, bool]] = []
    for name, st in fs.read_directory(open_fd):
        has_xattrs = True
        if st is not None and not stat.S_ISLNK(st.st_mode):
            try:
                fd = os.open(name, O_PATH_FLAGS, dir_fd=open_fd)
            except OSError:
                st = None  # gone since the listing
            else:
                try:
                    now = os.fstat(fd)
                    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                        has_xattrs = any(
                            not xattr.startswith(CLIENT_XATTR_EXCLUDED)
                            for xattr in os.listxattr(fs.proc_path(fd))
                        )
                except OSError:
                    pass
                finally:
                    os.close(fd)
        out.append((name, st, has_xattrs))
    return out


async def qsfreaddir(session: Session, request: m.Tqsfreaddir) -> Message:
    with session.fids.hold(request.fid) as (fid,):
        _, st, place = session._path_fid(fid)
        open_fd = session._open_fd(fid)
        if not stat.S_ISDIR(st.st_mode):
            raise fs.error(errno.ENOTDIR)
        if request.offset == 0 or fid.plus_snapshot is None:
            listing = await session._in_thread(list_directory_plus, open_fd)
            dots = session._snapshot(open_fd, place, [])
            snapshot = [QsfDirent(*dot, 0, _NO_ATTR) for dot in dots]
            for name, entry_st, has_xattrs in listing:
                if entry_st is None:
                    continue
                qid = session.qid(entry_st)
                d_type = fs.DT_BY_MODE.get(stat.S_IFMT(entry_st.st_mode), c.DT_UNKNOWN)
                flags = c.QSF_DIRENT_ATTR | (c.QSF_DIRENT_XATTRS if has_xattrs else 0)
                snapshot.append(QsfDirent(qid, len(snapshot) + 1, d_type, name, flags,
                                          attributes(qid, entry_st)))
            session.fids.charge(fid, sum(_ENTRY_MEMORY + len(e.name) for e in snapshot))
            fid.plus_snapshot = snapshot
        snapshot = fid.plus_snapshot
        return m.Rqsfreaddir(paging.page(snapshot, request.offset, request.count,
                                         session.msize, QSF_DIRENT_OVERHEAD))


async def qsfwatch(session: Session, request: m.Tqsfwatch) -> Message:
    watcher = session.watcher
    if watcher is None:
        raise fs.error(errno.EOPNOTSUPP)
    budget = min(request.count, session.msize - RREAD_OVERHEAD - 1)
    if budget < QSF_EVENT_OVERHEAD + fs.NAME_MAX:
        raise fs.error(errno.EINVAL, "count too small for an event")
    return m.Rqsfwatch(await watcher.next_events(budget))
