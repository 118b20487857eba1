"""Conversions between what the kernel asks (pyfuse3) and what 9P2000.L carries.

Everything coming from the server is checked here before the kernel sees it:
file types, names, sizes and times.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Final

import pyfuse3

from qsf_p9 import constants as c
from qsf_p9 import messages as m

from .client import BadReply, P9Error

INT64_MAX: Final = (1 << 63) - 1
NAME_MAX: Final = 255
_NS: Final = 1_000_000_000

# File types a server may report; device nodes are shown (the mount is nodev).
_FILE_TYPES: Final = frozenset(
    {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR,
     stat.S_IFBLK}
)

# Host open(2) flags passed on to the server in Tlopen/Tlcreate, bit by bit.
# O_TRUNC goes too: libfuse asks for atomic O_TRUNC, so the kernel sends it in
# the open instead of a setattr of the size. O_CREAT/O_EXCL are the create's
# business, the others (O_DIRECT, O_NOATIME, ...) have no meaning on the
# server's side.
_OPEN_FLAGS: Final = (
    (os.O_TRUNC, c.L_O_TRUNC),
    (os.O_APPEND, c.L_O_APPEND),
    (os.O_DSYNC, c.L_O_DSYNC),
    (os.O_SYNC, c.L_O_SYNC),  # O_SYNC includes O_DSYNC's bit on Linux
    (os.O_DIRECTORY, c.L_O_DIRECTORY),
)


def open_flags(flags: int) -> int:
    """The Tlopen flags for host open(2) flags."""
    result = flags & os.O_ACCMODE
    if result == os.O_ACCMODE:
        raise P9Error(errno.EINVAL)
    for host, wire in _OPEN_FLAGS:
        if flags & host == host:
            result |= wire
    return result


def check_name(name: bytes) -> bytes:
    """A name to send: one path component (the kernel checked it; defence in depth)."""
    if len(name) > NAME_MAX:
        raise P9Error(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name:
        raise P9Error(errno.EINVAL)
    if name in (b".", b".."):
        raise P9Error(errno.EINVAL)
    return name


def valid_entry_name(name: bytes) -> bool:
    """Whether a name in a server's directory listing may be shown."""
    return (
        0 < len(name) <= NAME_MAX
        and b"/" not in name
        and b"\0" not in name
        and name not in (b".", b"..")
    )


def _ns(sec: int, nsec: int) -> int:
    return min(sec * _NS + nsec, INT64_MAX)


def entry_attributes(reply: m.Rgetattr, inode: int, timeout: float) -> pyfuse3.EntryAttributes:
    """Checked EntryAttributes for the kernel from a server's Rgetattr."""
    if stat.S_IFMT(reply.mode) not in _FILE_TYPES:
        raise BadReply(f"file type {stat.S_IFMT(reply.mode):o}")
    if reply.mode & ~0o177777:
        raise BadReply(f"mode {reply.mode:o}")
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = inode
    attrs.generation = 0
    attrs.entry_timeout = timeout
    attrs.attr_timeout = timeout
    attrs.st_mode = reply.mode
    attrs.st_nlink = min(reply.nlink, 0xFFFFFFFF)
    attrs.st_uid = reply.uid
    attrs.st_gid = reply.gid
    attrs.st_rdev = min(reply.rdev, 0xFFFFFFFF)
    attrs.st_size = min(reply.size, INT64_MAX)
    attrs.st_blksize = min(max(reply.blksize, 512), 1 << 20)
    attrs.st_blocks = min(reply.blocks, INT64_MAX)
    attrs.st_atime_ns = _ns(reply.atime_sec, reply.atime_nsec)
    attrs.st_mtime_ns = _ns(reply.mtime_sec, reply.mtime_nsec)
    attrs.st_ctime_ns = _ns(reply.ctime_sec, reply.ctime_nsec)
    return attrs


def cache_key(version: int, attrs: pyfuse3.EntryAttributes) -> tuple[int, int, int]:
    """What must stay unchanged for cached file data to stay valid."""
    return (version, attrs.st_mtime_ns, attrs.st_size)


def setattr_message(
    fid: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields
) -> m.Tsetattr:
    """The Tsetattr for a FUSE setattr (chmod, chown, truncate, utimens)."""
    valid = 0
    mode = uid = gid = size = 0
    atime = mtime = 0
    if fields.update_mode:
        valid |= c.SETATTR_MODE
        mode = stat.S_IMODE(attr.st_mode)
    if fields.update_uid:
        valid |= c.SETATTR_UID
        uid = attr.st_uid
    if fields.update_gid:
        valid |= c.SETATTR_GID
        gid = attr.st_gid
    if fields.update_size:
        valid |= c.SETATTR_SIZE
        size = attr.st_size
        if size < 0:
            raise P9Error(errno.EINVAL)
    if fields.update_atime:
        valid |= c.SETATTR_ATIME | c.SETATTR_ATIME_SET
        atime = attr.st_atime_ns
    if fields.update_mtime:
        valid |= c.SETATTR_MTIME | c.SETATTR_MTIME_SET
        mtime = attr.st_mtime_ns
    if fields.update_ctime:
        valid |= c.SETATTR_CTIME
    if atime < 0 or mtime < 0:
        raise P9Error(errno.EINVAL)  # times before 1970 do not fit the wire's u64
    return m.Tsetattr(
        fid, valid, mode, uid, gid, size,
        atime // _NS, atime % _NS, mtime // _NS, mtime % _NS,
    )


_COPIED = ("st_ino", "generation", "entry_timeout", "st_mode", "st_nlink", "st_uid", "st_gid",
           "st_rdev", "st_size", "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns",
           "st_ctime_ns")


def after_setattr(
    old: pyfuse3.EntryAttributes, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields
) -> pyfuse3.EntryAttributes:
    """old with a successful setattr applied, to be revalidated at once (attr_timeout 0)."""
    new = pyfuse3.EntryAttributes()
    for name in _COPIED:
        setattr(new, name, getattr(old, name))
    new.attr_timeout = 0
    if fields.update_mode:
        new.st_mode = stat.S_IFMT(old.st_mode) | stat.S_IMODE(attr.st_mode)
    if fields.update_uid:
        new.st_uid = attr.st_uid
    if fields.update_gid:
        new.st_gid = attr.st_gid
    if fields.update_size:
        new.st_size = attr.st_size
    if fields.update_atime:
        new.st_atime_ns = attr.st_atime_ns
    if fields.update_mtime:
        new.st_mtime_ns = attr.st_mtime_ns
    new.st_ctime_ns = time.time_ns()
    return new


def statvfs(reply: m.Rstatfs) -> pyfuse3.StatvfsData:
    data = pyfuse3.StatvfsData()
    data.f_bsize = min(max(reply.bsize, 512), 1 << 20)
    data.f_frsize = data.f_bsize
    data.f_blocks = min(reply.blocks, INT64_MAX)
    data.f_bfree = min(reply.bfree, data.f_blocks)
    data.f_bavail = min(reply.bavail, data.f_bfree)
    data.f_files = min(reply.files, INT64_MAX)
    data.f_ffree = min(reply.ffree, data.f_files)
    data.f_favail = data.f_ffree
    data.f_namemax = min(reply.namelen, NAME_MAX) or NAME_MAX
    return data
