"""The confined file system: every operation relative to a file descriptor.

Every node a client reaches is held as an O_PATH|O_NOFOLLOW descriptor, found
one validated component at a time from the export's root. No path string is
ever joined; symlinks are never followed; only regular files and directories
are ever opened (through /proc/self/fd after fstat shows their type), so a
FIFO, socket or device node is never opened. `..` is answered from the chain
of places walked from the root, never above it.

Functions raise OSError (errno straight to Rlerror). Nothing here touches the
fid table or awaits: the session decides what runs in a worker thread.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Final

from qsf_p9 import constants as c

from . import sysfs

O_PATH_FLAGS: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
NAME_MAX: Final = 255
XATTR_SIZE_MAX: Final = 64 * 1024  # Linux's bound on one value and on a name list
XATTR_NAME_MAX: Final = 255
# Deepest place a walk may reach: beyond PATH_MAX / 2 no path could name it, and
# the chain of places a fid keeps stays bounded.
MAX_DEPTH: Final = 2048
# Namespaces a client may set or remove: user data and POSIX ACLs. security.*
# (file capabilities, SELinux labels) and trusted.* stay out of reach even
# when the server runs as root.
_WRITABLE_XATTR_PREFIXES: Final = (b"user.",)
_WRITABLE_XATTR_NAMES: Final = (b"system.posix_acl_access", b"system.posix_acl_default")

# 9P2000.L open flag -> host flag. TRUNC is honoured; CREAT/EXCL belong to Tlcreate;
# NOFOLLOW is implied (the node is already resolved), NOATIME needs ownership.
_OPEN_FLAG_MAP: Final = (
    (c.L_O_TRUNC, os.O_TRUNC),
    (c.L_O_APPEND, os.O_APPEND),
    (c.L_O_DSYNC, os.O_DSYNC),
    (c.L_O_DIRECT, os.O_DIRECT),
    (c.L_O_DIRECTORY, os.O_DIRECTORY),
    (c.L_O_SYNC, os.O_SYNC),
)
_ACCESS_MAP: Final = {c.L_O_RDONLY: os.O_RDONLY, c.L_O_WRONLY: os.O_WRONLY,
                      c.L_O_RDWR: os.O_RDWR}
_IS_ROOT: Final = os.geteuid() == 0


def error(code: int, what: str = "") -> OSError:
    return OSError(code, what or os.strerror(code))


@dataclass(frozen=True, slots=True)
class Place:
    """Where a node was reached: its parent place and name, and its identity then.

    The root's parent is None. Places are shared between fids; they hold no
    descriptor, so a deep chain costs memory only.
    """

    parent: Place | None
    name: bytes
    dev: int
    ino: int
    depth: int = 0

    def child(self, name: bytes, st: os.stat_result) -> Place:
        return Place(self, name, st.st_dev, st.st_ino, self.depth + 1)


def check_name(name: bytes) -> None:
    """One plain component: not "", "." or "..", no "/" and no NUL."""
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise error(errno.EINVAL, f"invalid name {name!r}")
    if len(name) > NAME_MAX:
        raise error(errno.ENAMETOOLONG)


def host_open_flags(flags: int) -> int:
    """Map 9P2000.L open flags to host flags for reopening a resolved node."""
    access = flags & c.L_O_ACCMODE
    if access not in _ACCESS_MAP:
        raise error(errno.EINVAL, "open access mode 3 (no access) is not supported")
    host = _ACCESS_MAP[access] | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    for wire, local in _OPEN_FLAG_MAP:
        if flags & wire:
            host |= local
    return host


def wants_write(flags: int) -> bool:
    return (flags & c.L_O_ACCMODE) in (c.L_O_WRONLY, c.L_O_RDWR) or bool(
        flags & (c.L_O_TRUNC | c.L_O_APPEND | c.L_O_CREAT))


def proc_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def creation_mode(mode: int) -> int:
    """Permission bits for a new file; a root server never makes setuid/setgid files."""
    mode &= 0o7777
    if _IS_ROOT:
        mode &= ~(stat.S_ISUID | stat.S_ISGID)
    return mode


class Export:
    """The exported directory: its root descriptor and the walk from it."""

    def __init__(self, path: str | bytes, *, max_depth: int = MAX_DEPTH) -> None:
        self.max_depth = max_depth
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.root_fd = fd
        st = os.fstat(fd)
        self.root_place = Place(None, b"", st.st_dev, st.st_ino)
        self.path = os.fsencode(os.path.abspath(path))
        # The attach names that select this export (besides ""): its path as given or resolved.
        self.anames = frozenset({self.path, os.fsencode(os.path.realpath(path))})

    def close(self) -> None:
        os.close(self.root_fd)

    def attach(self) -> tuple[int, os.stat_result, Place]:
        fd = os.dup(self.root_fd)
        return fd, os.fstat(fd), self.root_place

    # -- walking ---------------------------------------------------------

    def walk_one(self, fd: int, st: os.stat_result, place: Place,
                 name: bytes) -> tuple[int, os.stat_result, Place]:
        """Step from node `fd` to `name`; returns a new O_PATH fd the caller owns."""
        if not stat.S_ISDIR(st.st_mode):
            raise error(errno.ENOTDIR)
        if name == b"..":
            return self._walk_up(fd, place)
        if name == b".":
            # The directory itself (diod's clients walk "." for `ls -l`).
            same = os.dup(fd)
            return same, st, place
        check_name(name)
        if place.depth >= self.max_depth:
            raise error(errno.ENAMETOOLONG, "too deep below the export root")
        new_fd = sysfs.open_beneath(fd, name, O_PATH_FLAGS)
        try:
            new_st = os.fstat(new_fd)
            new_place = place.child(name, new_st)
        except BaseException:
            os.close(new_fd)
            raise
        return new_fd, new_st, new_place

    def _walk_up(self, fd: int, place: Place) -> tuple[int, os.stat_result, Place]:
        parent = place.parent
        if parent is None or parent.parent is None:
            # The root's `..` is the root.
            return self.attach()
        new_fd = os.open(b"..", O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=fd)
        try:
            new_st = os.fstat(new_fd)
            if (new_st.st_dev, new_st.st_ino) != (parent.dev, parent.ino):
                # Moved since it was walked: `..` is no longer the directory we came through.
                raise error(errno.ENOENT, "parent directory has moved")
        except BaseException:
            os.close(new_fd)
            raise
        return new_fd, new_st, parent

    def parent_of(self, place: Place) -> tuple[int, bytes]:
        """An O_PATH fd of `place`'s parent, found again from the root, and its name.

        Every step is checked against the identity recorded when it was walked.
        """
        if place.parent is None:
            raise error(errno.EBUSY, "the export root has no parent")
        chain: list[Place] = []
        step: Place | None = place.parent
        while step is not None and step.parent is not None:
            chain.append(step)
            step = step.parent
        fd = os.dup(self.root_fd)
        try:
            for step in reversed(chain):
                new_fd = sysfs.open_beneath(fd, step.name, O_PATH_FLAGS | os.O_DIRECTORY)
                os.close(fd)
                fd = new_fd
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (step.dev, step.ino):
                    raise error(errno.ESTALE, "a directory on the way has changed")
        except BaseException:
            os.close(fd)
            raise
        return fd, place.name

    # -- opening ---------------------------------------------------------

    @staticmethod
    def reopen(fd: int, st: os.stat_result, flags: int) -> int:
        """Open the node of O_PATH `fd` for I/O: regular files and directories only."""
        if stat.S_ISDIR(st.st_mode):
            if (flags & c.L_O_ACCMODE) != c.L_O_RDONLY:
                raise error(errno.EISDIR)
            host = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK
        elif stat.S_ISREG(st.st_mode):
            host = host_open_flags(flags) & ~os.O_DIRECTORY
        elif stat.S_ISLNK(st.st_mode):
            raise error(errno.ELOOP)
        else:
            # FIFOs, sockets and device nodes are never opened (CVE-2023-2861 class).
            raise error(errno.ENXIO, "only regular files and directories can be opened")
        if flags & c.L_O_DIRECTORY and not stat.S_ISDIR(st.st_mode):
            raise error(errno.ENOTDIR)
        new_fd = os.open(proc_path(fd), host)
        try:
            new_st = os.fstat(new_fd)
            if (new_st.st_dev, new_st.st_ino) != (st.st_dev, st.st_ino):
                raise error(errno.ESTALE)
        except BaseException:
            os.close(new_fd)
            raise
        return new_fd

    @staticmethod
    def create(dir_fd: int, name: bytes, flags: int, mode: int) -> tuple[int, int, os.stat_result]:
        """Create regular file `name` (never an existing one) and open it.

        Returns (O_PATH fd, open fd, stat).
        """
        check_name(name)
        host = host_open_flags(flags) & ~os.O_DIRECTORY
        host |= os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        open_fd = os.open(name, host, creation_mode(mode), dir_fd=dir_fd)
        try:
            st = os.fstat(open_fd)
            path_fd = os.open(proc_path(open_fd), os.O_PATH | os.O_CLOEXEC)
        except BaseException:
            os.close(open_fd)
            raise
        return path_fd, open_fd, st

    # -- making and removing names ----------------------------------------

    @staticmethod
    def stat_name(dir_fd: int, name: bytes) -> os.stat_result:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)

    def mkdir(self, dir_fd: int, name: bytes, mode: int) -> os.stat_result:
        check_name(name)
        os.mkdir(name, mode & 0o3777, dir_fd=dir_fd)
        return self.stat_name(dir_fd, name)

    def symlink(self, dir_fd: int, name: bytes, target: bytes) -> os.stat_result:
        check_name(name)
        if not target or b"\0" in target:
            raise error(errno.EINVAL, "invalid symlink target")
        os.symlink(target, name, dir_fd=dir_fd)
        return self.stat_name(dir_fd, name)

    def mknod(self, dir_fd: int, name: bytes, mode: int) -> os.stat_result:
        check_name(name)
        kind = stat.S_IFMT(mode)
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            raise error(errno.EPERM, "device nodes are never created")
        if kind not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG, 0):
            raise error(errno.EINVAL, "unknown file type")
        os.mknod(name, kind | creation_mode(mode), 0, dir_fd=dir_fd)
        return self.stat_name(dir_fd, name)

    @staticmethod
    def link(fd: int, st: os.stat_result, dir_fd: int, name: bytes) -> None:
        check_name(name)
        if stat.S_ISDIR(st.st_mode):
            raise error(errno.EPERM, "hard links to directories are not allowed")
        sysfs.link_fd(fd, dir_fd, name)

    @staticmethod
    def rename(old_dir_fd: int, old_name: bytes, new_dir_fd: int, new_name: bytes) -> None:
        check_name(old_name)
        check_name(new_name)
        os.rename(old_name, new_name, src_dir_fd=old_dir_fd, dst_dir_fd=new_dir_fd)

    @staticmethod
    def unlink(dir_fd: int, name: bytes, remove_dir: bool) -> None:
        check_name(name)
        if remove_dir:
            os.rmdir(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)

    @staticmethod
    def readlink(fd: int, st: os.stat_result) -> bytes:
        if not stat.S_ISLNK(st.st_mode):
            raise error(errno.EINVAL, "not a symlink")
        return os.readlink(b"", dir_fd=fd)

    # -- attributes ------------------------------------------------------

    @staticmethod
    def chmod(fd: int, st: os.stat_result, mode: int) -> None:
        if stat.S_ISLNK(st.st_mode):
            raise error(errno.EOPNOTSUPP, "symlinks have no mode of their own")
        mode &= 0o7777
        if _IS_ROOT and not stat.S_ISDIR(st.st_mode):
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        os.chmod(proc_path(fd), mode)

    @staticmethod
    def chown(fd: int, uid: int, gid: int) -> None:
        # The /proc link of an O_PATH fd names the node itself, even a symlink.
        os.chown(proc_path(fd), uid, gid)
        if _IS_ROOT:
            # Root keeps setuid/setgid bits across chown (CAP_FSETID): a client
            # must not turn a setuid file into a setuid-root one.
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(proc_path(fd), stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))

    @staticmethod
    def truncate(fd: int, st: os.stat_result, open_fd: int | None, size: int) -> None:
        if size >= 1 << 63:
            raise error(errno.EFBIG)
        if stat.S_ISDIR(st.st_mode):
            raise error(errno.EISDIR)
        if not stat.S_ISREG(st.st_mode):
            raise error(errno.EINVAL)
        if open_fd is not None:
            try:
                os.ftruncate(open_fd, size)
                return
            except OSError as failure:
                if failure.errno not in (errno.EBADF, errno.EINVAL):
                    raise
        os.truncate(proc_path(fd), size)

    @staticmethod
    def statfs(fd: int) -> os.statvfs_result:
        return os.fstatvfs(fd)

    # -- data (run in worker threads by the session) ------------------------

    @staticmethod
    def read(open_fd: int, count: int, offset: int) -> bytes:
        if offset >= 1 << 63:
            return b""
        return os.pread(open_fd, count, offset)

    @staticmethod
    def read_cached(open_fd: int, count: int, offset: int) -> memoryview | None:
        """The read if the page cache holds all of it (RWF_NOWAIT: never waits
        for the disk), else None: then `read` must run in a worker thread."""
        if offset >= 1 << 63:
            return memoryview(b"")
        buffer = bytearray(count)
        try:
            got = os.preadv(open_fd, [buffer], offset, os.RWF_NOWAIT)
        except OSError as failure:
            if failure.errno in (errno.EAGAIN, errno.EOPNOTSUPP):
                return None
            raise
        if got < count and offset + got < os.fstat(open_fd).st_size:
            return None  # only part of it is cached: not the end of the file
        return memoryview(buffer)[:got]

    @staticmethod
    def write(open_fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        if offset >= 1 << 63:
            raise error(errno.EFBIG)
        return os.pwrite(open_fd, data, offset)

    @staticmethod
    def sync(open_fd: int, data_only: bool) -> None:
        if data_only:
            os.fdatasync(open_fd)
        else:
            os.fsync(open_fd)

    @staticmethod
    def list_directory(open_fd: int) -> list[tuple[bytes, os.stat_result | None]]:
        return read_directory(open_fd)

    # -- extended attributes ---------------------------------------------

    @staticmethod
    def _xattr_path(fd: int, st: os.stat_result) -> str:
        if stat.S_ISLNK(st.st_mode):
            raise error(errno.EOPNOTSUPP, "no extended attributes on symlinks")
        return proc_path(fd)

    def xattr_get(self, fd: int, st: os.stat_result, name: bytes) -> bytes:
        check_xattr_name(name)
        value = os.getxattr(self._xattr_path(fd, st), name)
        if len(value) > XATTR_SIZE_MAX:
            raise error(errno.E2BIG)
        return value

    def xattr_list(self, fd: int, st: os.stat_result) -> bytes:
        if stat.S_ISLNK(st.st_mode):
            return b""
        names = os.listxattr(self._xattr_path(fd, st))
        listing = b"".join(os.fsencode(name) + b"\0" for name in names)
        if len(listing) > XATTR_SIZE_MAX:
            raise error(errno.E2BIG)
        return listing

    def xattr_set(self, fd: int, st: os.stat_result, name: bytes, value: bytes,
                  flags: int) -> None:
        check_xattr_name(name)
        check_xattr_writable(name)
        host_flags = 0
        if flags & c.XATTR_CREATE:
            host_flags |= os.XATTR_CREATE
        if flags & c.XATTR_REPLACE:
            host_flags |= os.XATTR_REPLACE
        os.setxattr(self._xattr_path(fd, st), name, value, host_flags)

    def xattr_remove(self, fd: int, st: os.stat_result, name: bytes) -> None:
        check_xattr_name(name)
        check_xattr_writable(name)
        os.removexattr(self._xattr_path(fd, st), name)


def check_xattr_name(name: bytes) -> None:
    if not name or b"\0" in name:
        raise error(errno.EINVAL, "invalid extended attribute name")
    if len(name) > XATTR_NAME_MAX:
        raise error(errno.ERANGE)


def check_xattr_writable(name: bytes) -> None:
    if name.startswith(_WRITABLE_XATTR_PREFIXES) or name in _WRITABLE_XATTR_NAMES:
        return
    raise error(errno.EPERM, "only user.* and POSIX ACL attributes can be changed")


def read_directory(fd: int) -> list[tuple[bytes, os.stat_result | None]]:
    """The entries of open directory `fd` (without . and ..), each with its lstat.

    An entry that vanished since the listing keeps None.
    """
    entries: list[tuple[bytes, os.stat_result | None]] = []
    for name in os.listdir(fd):
        encoded = os.fsencode(name)
        try:
            st: os.stat_result | None = os.stat(encoded, dir_fd=fd, follow_symlinks=False)
        except OSError:
            st = None
        entries.append((encoded, st))
    return entries


DT_BY_MODE: Final = {
    stat.S_IFDIR: c.DT_DIR, stat.S_IFREG: c.DT_REG, stat.S_IFLNK: c.DT_LNK,
    stat.S_IFIFO: c.DT_FIFO, stat.S_IFSOCK: c.DT_SOCK, stat.S_IFCHR: c.DT_CHR,
    stat.S_IFBLK: c.DT_BLK,
}
