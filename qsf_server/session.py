"""Answers to 9P2000.L requests: protocol checks, the fid table, then the file system.

One Session per negotiated 9P session. `handle` turns any request into its
reply or an Rlerror and never raises (except trio.Cancelled). Handlers run in
the event loop; only bulk data calls (read, write, fsync, listing a
directory) go to a worker thread, and those return plain data, so a request
cancelled by Tflush leaks nothing. Descriptors used by a thread belong to a
fid held for the whole call.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import trio

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_p9.codec import DIRENT_OVERHEAD, RREAD_OVERHEAD
from qsf_p9.messages import Dirent, Message, Qid

from . import extensions, fs, paging, sysfs
from .fids import Fid, FidTable, XattrWrite
from .qids import QidMapper
from .watcher import Watcher
from .writes import WriteBatcher

log = logging.getLogger("qsf_server")

V9FS_MAGIC: Final = 0x01021997
DEFAULT_MAX_FIDS: Final = 65536
DEFAULT_MAX_BUFFERED: Final = 256 << 20  # directory listings and xattr values held by fids
_LOCK_TYPES: Final = {c.LOCK_TYPE_RDLCK: fcntl.F_RDLCK, c.LOCK_TYPE_WRLCK: fcntl.F_WRLCK,
                      c.LOCK_TYPE_UNLCK: fcntl.F_UNLCK}
_WIRE_LOCK_TYPES: Final = {host: wire for wire, host in _LOCK_TYPES.items()}
_MAX_OFFSET: Final = (1 << 63) - 1
_SETATTR_KNOWN: Final = 0x1FF
_DIRENT_MEMORY: Final = 200  # about what one listed entry costs in memory, besides its name

T = TypeVar("T")
Handler = Callable[[Any], Awaitable[Message]]


def _eio_unless_errno(failure: OSError) -> int:
    code = failure.errno
    return code if isinstance(code, int) and 0 < code < 4096 else errno.EIO


class Session:
    """The state of one 9P session: fids and the negotiated msize."""

    def __init__(self, export: fs.Export, *, msize: int, read_only: bool = False,
                 max_fids: int = DEFAULT_MAX_FIDS,
                 max_buffered: int = DEFAULT_MAX_BUFFERED, qsf: bool = False) -> None:
        self.export = export
        self.msize = msize
        self.read_only = read_only
        self.fids = FidTable(max_fids, max_buffered)
        self._writes = WriteBatcher(export.write)
        self.qids = QidMapper(export.root_place.dev)
        self._handlers: dict[type[Message], Handler] = {
            m.Tauth: self.auth, m.Tattach: self.attach, m.Twalk: self.walk,
            m.Tlopen: self.lopen, m.Tlcreate: self.lcreate, m.Tread: self.read,
            m.Twrite: self.write, m.Tclunk: self.clunk, m.Tremove: self.remove,
            m.Tgetattr: self.getattr, m.Tsetattr: self.setattr, m.Treaddir: self.readdir,
            m.Tmkdir: self.mkdir, m.Tsymlink: self.symlink, m.Tmknod: self.mknod,
            m.Tlink: self.link, m.Trename: self.rename, m.Trenameat: self.renameat,
            m.Tunlinkat: self.unlinkat, m.Treadlink: self.readlink, m.Tstatfs: self.statfs,
            m.Tfsync: self.fsync, m.Txattrwalk: self.xattrwalk,
            m.Txattrcreate: self.xattrcreate, m.Tlock: self.lock, m.Tgetlock: self.getlock,
        }
        # The qsf extensions, in a session negotiated for them only.
        self.watcher: Watcher | None = None
        if qsf:
            self.watcher = Watcher(self.qids)
            self._handlers[m.Tqsfreaddir] = lambda request: extensions.qsfreaddir(self, request)
            self._handlers[m.Tqsfwatch] = lambda request: extensions.qsfwatch(self, request)

    def close(self) -> None:
        """Detach every fid; descriptors still used by a request close when it ends."""
        self.fids.clear()
        if self.watcher is not None:
            self.watcher.close()

    async def handle(self, request: Message) -> Message:
        """The reply to `request`: its R-message or an Rlerror, never an exception."""
        handler = self._handlers.get(type(request))
        if handler is None:
            return m.Rlerror(errno.EOPNOTSUPP)
        try:
            return await handler(request)
        except Exception as failure:  # the one boundary to Rlerror
            return _error_reply(request, failure)

    def read_now(self, request: m.Tread) -> Message | None:
        """The reply to a Tread that needs no waiting (cached data, an xattr
        value, an error), or None: then `handle` must serve it in a task."""
        try:
            with self.fids.hold(request.fid) as (fid,):
                count = self._read_budget(request.count)
                if fid.xattr_data is not None:
                    return self._xattr_read(fid.xattr_data, request.offset, count)
                data = self.export.read_cached(self._open_fd(fid), count, request.offset)
                return None if data is None else m.Rread(data)
        except Exception as failure:  # the one boundary to Rlerror
            return _error_reply(request, failure)

    # -- helpers -----------------------------------------------------------

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(function, *args)

    def _refuse_if_read_only(self) -> None:
        if self.read_only:
            raise fs.error(errno.EROFS)

    def qid(self, st: os.stat_result) -> Qid:
        return self.qids.qid(st)

    @staticmethod
    def _path_fid(fid: Fid) -> tuple[int, os.stat_result, fs.Place]:
        if fid.fd is None or fid.st is None or fid.place is None or fid.xattr_write is not None:
            raise fs.error(errno.EBADF, "not a file fid")
        return fid.fd, fid.st, fid.place

    def _directory_fid(self, fid: Fid) -> tuple[int, fs.Place]:
        fd, st, place = self._path_fid(fid)
        if not stat.S_ISDIR(st.st_mode):
            raise fs.error(errno.ENOTDIR)
        return fd, place

    @staticmethod
    def _open_fd(fid: Fid) -> int:
        if fid.open_fd is None:
            raise fs.error(errno.EBADF, "fid is not open")
        return fid.open_fd

    def _child(self, dir_place: fs.Place, name: bytes, st: os.stat_result) -> fs.Place:
        return dir_place.child(name, st)

    # -- session -----------------------------------------------------------

    async def auth(self, request: m.Tauth) -> Message:
        # No authentication in 9P: dom0 authorised the channel. diod's client
        # library reads ENOENT (or no errno) as "authentication not required".
        return m.Rlerror(errno.ENOENT)

    async def attach(self, request: m.Tattach) -> Message:
        if request.afid != c.NOFID:
            raise fs.error(errno.EBADF, "no authentication fids")
        if request.aname and request.aname not in self.export.anames:
            raise fs.error(errno.ENOENT, "aname must be empty or the export path")
        if request.fid in self.fids:
            raise fs.error(errno.EBADF, "fid in use")
        fd, st, place = self.export.attach()
        self.fids.add(request.fid, Fid(fd, st, place))
        if self.watcher is not None:
            self.watcher.watch(fd, st)
        return m.Rattach(self.qid(st))

    async def walk(self, request: m.Twalk) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            start_fd, start_st, start_place = self._path_fid(fid)
            if request.newfid != request.fid and request.newfid in self.fids:
                raise fs.error(errno.EBADF, "newfid in use")
            fd, st, place = start_fd, start_st, start_place
            owned = False
            qids: list[Qid] = []
            try:
                for index, name in enumerate(request.wnames):
                    try:
                        step = self.export.walk_one(fd, st, place, name)
                    except OSError:
                        if index == 0:
                            raise
                        break
                    if owned:
                        os.close(fd)
                    fd, st, place = step
                    owned = True
                    qids.append(self.qid(st))
                if len(qids) < len(request.wnames):
                    return m.Rwalk(tuple(qids))  # partial walk: newfid is not made
                if not owned:
                    fd = os.dup(start_fd)
                    owned = True
                new = Fid(fd, st, place)
                owned = False  # add/replace own it from here, closing it on failure
                if request.newfid == request.fid:
                    self.fids.replace(request.fid, new)
                else:
                    self.fids.add(request.newfid, new)
                if self.watcher is not None and qids:
                    self.watcher.watch(fd, st)
            finally:
                if owned:
                    os.close(fd)
            return m.Rwalk(tuple(qids))

    async def clunk(self, request: m.Tclunk) -> Message:
        try:
            with self.fids.hold(request.fid) as (fid,):
                if fid.xattr_write is not None:
                    self._commit_xattr(fid, fid.xattr_write)
        finally:
            if request.fid in self.fids:
                self.fids.remove(request.fid)
        return m.Rclunk()

    async def remove(self, request: m.Tremove) -> Message:
        try:
            with self.fids.hold(request.fid) as (fid,):
                self._refuse_if_read_only()
                _, st, place = self._path_fid(fid)
                parent_fd, name = self.export.parent_of(place)
                try:
                    now = self.export.stat_name(parent_fd, name)
                    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                        raise fs.error(errno.ESTALE, "the name now points elsewhere")
                    self.export.unlink(parent_fd, name, stat.S_ISDIR(now.st_mode))
                finally:
                    os.close(parent_fd)
        finally:
            if request.fid in self.fids:
                self.fids.remove(request.fid)
        return m.Rremove()

    # -- open, read, write -----------------------------------------------

    async def lopen(self, request: m.Tlopen) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            fd, _, _ = self._path_fid(fid)
            if fid.open_fd is not None:
                raise fs.error(errno.EBADF, "fid already open")
            if fs.wants_write(request.flags):
                self._refuse_if_read_only()
            st = os.fstat(fd)
            open_fd = self.export.reopen(fd, st, request.flags)
            if fid.open_fd is not None or fid.detached:  # defensive: nothing awaited since
                os.close(open_fd)
                raise fs.error(errno.EBADF)
            fid.open_fd = open_fd
            fid.open_flags = request.flags
            return m.Rlopen(self.qid(st), 0)

    async def lcreate(self, request: m.Tlcreate) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            self._refuse_if_read_only()
            dir_fd, place = self._directory_fid(fid)
            if fid.open_fd is not None:
                raise fs.error(errno.EBADF, "directory fid is open")
            path_fd, open_fd, st = self.export.create(dir_fd, request.name, request.flags,
                                                      request.mode)
            new = Fid(path_fd, st, self._child(place, request.name, st), open_fd=open_fd,
                      open_flags=request.flags)
            self.fids.replace(request.fid, new)
            return m.Rlcreate(self.qid(st), 0)

    def _read_budget(self, count: int) -> int:
        # A reply must stay below msize: Linux drops the connection otherwise.
        return max(0, min(count, self.msize - RREAD_OVERHEAD - 1))

    async def read(self, request: m.Tread) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            count = self._read_budget(request.count)
            if fid.xattr_data is not None:
                return self._xattr_read(fid.xattr_data, request.offset, count)
            open_fd = self._open_fd(fid)
            data = await self._in_thread(self.export.read, open_fd, count, request.offset)
            return m.Rread(data)

    @staticmethod
    def _xattr_read(data: bytes, offset: int, count: int) -> Message:
        offset = min(offset, len(data))
        return m.Rread(data[offset:offset + count])

    async def write(self, request: m.Twrite) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            pending = fid.xattr_write
            if pending is not None:
                end = request.offset + len(request.data)
                if end > len(pending.value):
                    raise fs.error(errno.ENOSPC, "more bytes than Txattrcreate announced")
                pending.value[request.offset:end] = request.data
                pending.written += len(request.data)
                return m.Rwrite(len(request.data))
            self._refuse_if_read_only()
            open_fd = self._open_fd(fid)
            written = await self._writes.write(open_fd, request.data, request.offset)
            return m.Rwrite(written)

    async def fsync(self, request: m.Tfsync) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            open_fd = self._open_fd(fid)
            await self._in_thread(self.export.sync, open_fd, bool(request.datasync))
            return m.Rfsync()

    async def readdir(self, request: m.Treaddir) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            _, st, place = self._path_fid(fid)
            open_fd = self._open_fd(fid)
            if not stat.S_ISDIR(st.st_mode):
                raise fs.error(errno.ENOTDIR)
            if request.offset == 0 or fid.dir_snapshot is None:
                listing = await self._in_thread(self.export.list_directory, open_fd)
                snapshot = self._snapshot(open_fd, place, listing)
                self.fids.charge(fid, sum(_DIRENT_MEMORY + len(e.name) for e in snapshot))
                fid.dir_snapshot = snapshot
            snapshot = fid.dir_snapshot
            return m.Rreaddir(paging.page(snapshot, request.offset, request.count,
                                          self.msize, DIRENT_OVERHEAD))

    def _snapshot(self, open_fd: int, place: fs.Place,
                  listing: list[tuple[bytes, os.stat_result | None]]) -> list[Dirent]:
        here = os.fstat(open_fd)
        here_qid = self.qid(here)
        parent = place.parent
        if parent is None:
            parent_qid = here_qid  # the root's `..` is the root
        else:
            parent_qid = Qid(c.QTDIR, 1, self.qids.path(parent.dev, parent.ino))
        snapshot = [Dirent(here_qid, 1, c.DT_DIR, b"."), Dirent(parent_qid, 2, c.DT_DIR, b"..")]
        for name, st in listing:
            if st is None:
                continue  # gone since the listing
            qid = self.qid(st)
            d_type = fs.DT_BY_MODE.get(stat.S_IFMT(st.st_mode), c.DT_UNKNOWN)
            snapshot.append(Dirent(qid, len(snapshot) + 1, d_type, name))
        return snapshot

    # -- attributes ------------------------------------------------------

    async def getattr(self, request: m.Tgetattr) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            fd, _, _ = self._path_fid(fid)
            st = os.fstat(fd)
            return extensions.attributes(self.qid(st), st)

    async def setattr(self, request: m.Tsetattr) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            self._refuse_if_read_only()
            fd, _, _ = self._path_fid(fid)
            st = os.fstat(fd)
            valid = request.valid
            if valid & ~_SETATTR_KNOWN:
                raise fs.error(errno.EINVAL, "unknown setattr bits")
            if valid & c.SETATTR_MODE:
                self.export.chmod(fd, st, request.mode)
            if valid & (c.SETATTR_UID | c.SETATTR_GID):
                uid = request.uid if valid & c.SETATTR_UID else -1
                gid = request.gid if valid & c.SETATTR_GID else -1
                if uid == 0xFFFFFFFF or gid == 0xFFFFFFFF:
                    raise fs.error(errno.EINVAL, "uid or gid -1")
                self.export.chown(fd, uid, gid)
            if valid & c.SETATTR_SIZE:
                self.export.truncate(fd, st, fid.open_fd, request.size)
            if valid & (c.SETATTR_ATIME | c.SETATTR_MTIME):
                atime = mtime = None
                if valid & c.SETATTR_ATIME and valid & c.SETATTR_ATIME_SET:
                    atime = _timespec(request.atime_sec, request.atime_nsec)
                if valid & c.SETATTR_MTIME and valid & c.SETATTR_MTIME_SET:
                    mtime = _timespec(request.mtime_sec, request.mtime_nsec)
                sysfs.set_times(fd, atime, mtime,
                                bool(valid & c.SETATTR_ATIME and atime is None),
                                bool(valid & c.SETATTR_MTIME and mtime is None))
            return m.Rsetattr()

    async def statfs(self, request: m.Tstatfs) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            fd, _, _ = self._path_fid(fid)
            info = self.export.statfs(fd)
            return m.Rstatfs(
                type=V9FS_MAGIC, bsize=info.f_bsize, blocks=info.f_blocks, bfree=info.f_bfree,
                bavail=info.f_bavail, files=info.f_files, ffree=info.f_ffree,
                fsid=info.f_fsid & 0xFFFFFFFFFFFFFFFF, namelen=info.f_namemax,
            )

    async def readlink(self, request: m.Treadlink) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            fd, _, _ = self._path_fid(fid)
            target = self.export.readlink(fd, os.fstat(fd))
            if c.HDRSZ + 2 + len(target) >= self.msize:
                raise fs.error(errno.ENAMETOOLONG, "symlink target does not fit msize")
            return m.Rreadlink(target)

    # -- making and removing names ----------------------------------------

    async def mkdir(self, request: m.Tmkdir) -> Message:
        with self.fids.hold(request.dfid) as (directory,):
            self._refuse_if_read_only()
            dir_fd, _ = self._directory_fid(directory)
            return m.Rmkdir(self.qid(self.export.mkdir(dir_fd, request.name, request.mode)))

    async def symlink(self, request: m.Tsymlink) -> Message:
        with self.fids.hold(request.fid) as (directory,):
            self._refuse_if_read_only()
            dir_fd, _ = self._directory_fid(directory)
            st = self.export.symlink(dir_fd, request.name, request.symtgt)
            return m.Rsymlink(self.qid(st))

    async def mknod(self, request: m.Tmknod) -> Message:
        with self.fids.hold(request.dfid) as (directory,):
            self._refuse_if_read_only()
            dir_fd, _ = self._directory_fid(directory)
            return m.Rmknod(self.qid(self.export.mknod(dir_fd, request.name, request.mode)))

    async def link(self, request: m.Tlink) -> Message:
        with self.fids.hold(request.dfid, request.fid) as (directory, target):
            self._refuse_if_read_only()
            dir_fd, _ = self._directory_fid(directory)
            fd, _, _ = self._path_fid(target)
            self.export.link(fd, os.fstat(fd), dir_fd, request.name)
            return m.Rlink()

    async def rename(self, request: m.Trename) -> Message:
        with self.fids.hold(request.fid, request.dfid) as (fid, directory):
            self._refuse_if_read_only()
            _, st, place = self._path_fid(fid)
            new_dir_fd, new_dir_place = self._directory_fid(directory)
            fs.check_name(request.name)
            parent_fd, name = self.export.parent_of(place)
            try:
                now = self.export.stat_name(parent_fd, name)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    raise fs.error(errno.ESTALE, "the name now points elsewhere")
                self.export.rename(parent_fd, name, new_dir_fd, request.name)
            finally:
                os.close(parent_fd)
            fid.place = self._child(new_dir_place, request.name, st)
            return m.Rrename()

    async def renameat(self, request: m.Trenameat) -> Message:
        with self.fids.hold(request.olddirfid, request.newdirfid) as (old, new):
            self._refuse_if_read_only()
            old_fd, _ = self._directory_fid(old)
            new_fd, _ = self._directory_fid(new)
            self.export.rename(old_fd, request.oldname, new_fd, request.newname)
            return m.Rrenameat()

    async def unlinkat(self, request: m.Tunlinkat) -> Message:
        with self.fids.hold(request.dirfid) as (directory,):
            self._refuse_if_read_only()
            dir_fd, _ = self._directory_fid(directory)
            if request.flags & ~c.AT_REMOVEDIR:
                raise fs.error(errno.EINVAL, "unknown unlinkat flags")
            self.export.unlink(dir_fd, request.name, bool(request.flags & c.AT_REMOVEDIR))
            return m.Runlinkat()

    # -- extended attributes ---------------------------------------------

    async def xattrwalk(self, request: m.Txattrwalk) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            fd, _, _ = self._path_fid(fid)
            if request.newfid != request.fid and request.newfid in self.fids:
                raise fs.error(errno.EBADF, "newfid in use")
            st = os.fstat(fd)
            if request.name:
                data = self.export.xattr_get(fd, st, request.name)
            else:
                data = self.export.xattr_list(fd, st)
            new = Fid(None, None, None, xattr_data=data, memory=len(data))
            if request.newfid == request.fid:
                self.fids.replace(request.fid, new)
            else:
                self.fids.add(request.newfid, new)
            return m.Rxattrwalk(len(data))

    async def xattrcreate(self, request: m.Txattrcreate) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            self._refuse_if_read_only()
            fd, st, place = self._path_fid(fid)
            if request.attr_size > fs.XATTR_SIZE_MAX:
                raise fs.error(errno.E2BIG)
            if request.flags & ~(c.XATTR_CREATE | c.XATTR_REPLACE):
                raise fs.error(errno.EINVAL, "unknown xattr flags")
            fs.check_xattr_name(request.name)
            fs.check_xattr_writable(request.name)
            pending = XattrWrite(request.name, bytearray(request.attr_size), request.flags)
            self.fids.replace(request.fid, Fid(os.dup(fd), st, place, xattr_write=pending,
                                               memory=request.attr_size))
            return m.Rxattrcreate()

    def _commit_xattr(self, fid: Fid, pending: XattrWrite) -> None:
        if self.read_only:
            raise fs.error(errno.EROFS)
        if pending.written != len(pending.value):
            raise fs.error(errno.EINVAL, "xattr value shorter or longer than announced")
        assert fid.fd is not None
        st = os.fstat(fid.fd)
        if not pending.value:
            # Linux sends removexattr as a zero-length Txattrcreate.
            self.export.xattr_remove(fid.fd, st, pending.name)
        else:
            self.export.xattr_set(fid.fd, st, pending.name, bytes(pending.value),
                                  pending.flags)

    # -- locks -------------------------------------------------------------

    @staticmethod
    def _lock_range(start: int, length: int) -> tuple[int, int]:
        if start > _MAX_OFFSET or length > _MAX_OFFSET:
            raise fs.error(errno.EINVAL, "lock range beyond the largest offset")
        return start, length

    async def lock(self, request: m.Tlock) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            open_fd = self._open_fd(fid)
            host_type = _LOCK_TYPES.get(request.type)
            if host_type is None or request.flags & ~(c.LOCK_FLAGS_BLOCK | c.LOCK_FLAGS_RECLAIM):
                raise fs.error(errno.EINVAL, "bad lock type or flags")
            start, length = self._lock_range(request.start, request.length)
            # Never waits: a conflicting BLOCK request gets BLOCKED and the client retries.
            granted = sysfs.ofd_lock(open_fd, host_type, start, length)
            return m.Rlock(c.LOCK_SUCCESS if granted else c.LOCK_BLOCKED)

    async def getlock(self, request: m.Tgetlock) -> Message:
        with self.fids.hold(request.fid) as (fid,):
            open_fd = self._open_fd(fid)
            host_type = _LOCK_TYPES.get(request.type)
            if host_type is None or host_type == fcntl.F_UNLCK:
                raise fs.error(errno.EINVAL, "bad lock type")
            start, length = self._lock_range(request.start, request.length)
            found, found_start, found_length, pid = sysfs.ofd_getlock(
                open_fd, host_type, start, length)
            if found == fcntl.F_UNLCK:
                return m.Rgetlock(c.LOCK_TYPE_UNLCK, request.start, request.length,
                                  request.proc_id, b"")
            return m.Rgetlock(_WIRE_LOCK_TYPES.get(found, c.LOCK_TYPE_WRLCK), found_start,
                              found_length, max(pid, 0), b"")


def _error_reply(request: Message, failure: Exception) -> Message:
    """Rlerror for a failed request: OSError's errno as is, anything unexpected EIO."""
    if isinstance(failure, OSError):
        return m.Rlerror(_eio_unless_errno(failure))
    if isinstance(failure, ValueError | OverflowError):
        # os functions refuse embedded NULs and out-of-range numbers this way.
        return m.Rlerror(errno.EINVAL)
    log.error("unexpected failure answering %s", type(request).__name__,
              exc_info=failure)
    return m.Rlerror(errno.EIO)


def _timespec(seconds: int, nanoseconds: int) -> tuple[int, int]:
    if nanoseconds >= 1_000_000_000 or seconds > _MAX_OFFSET:
        raise fs.error(errno.EINVAL, "bad time")
    return seconds, nanoseconds

