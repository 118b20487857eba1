"""System calls that Python's os module lacks: openat2, linkat, utimensat, OFD locks.

Each wraps libc through ctypes and raises OSError like the os module does.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from typing import Final

_libc = ctypes.CDLL(None, use_errno=True)

SYS_OPENAT2: Final = 437  # x86-64 and every architecture since 5.6
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
AT_FDCWD: Final = -100
AT_EMPTY_PATH: Final = 0x1000
AT_SYMLINK_FOLLOW: Final = 0x400
UTIME_NOW: Final = (1 << 30) - 1
UTIME_OMIT: Final = (1 << 30) - 2
F_OFD_GETLK: Final = 36
F_OFD_SETLK: Final = 37
# struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid.
_FLOCK = struct.Struct("hhxxxxqqixxxx")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_linkat = _libc.linkat
_linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_utimensat = _libc.utimensat
_utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]

_openat2_missing = False


def _raise(what: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}")


def open_beneath(dir_fd: int, name: bytes, flags: int) -> int:
    """openat(dir_fd, name, flags) refusing symlinks and anything above dir_fd.

    Uses openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    where the kernel has it (5.6+), else plain openat; callers always pass
    O_NOFOLLOW and a single validated component, so both refuse the same names.
    """
    global _openat2_missing
    if not _openat2_missing:
        how = _OpenHow(flags, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        fd = _syscall(SYS_OPENAT2, dir_fd, name, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EPERM):  # EPERM: seccomp filters refuse it
            raise OSError(code, os.strerror(code))
        _openat2_missing = True
    return os.open(name, flags, dir_fd=dir_fd)


def link_fd(fd: int, new_dir_fd: int, new_name: bytes) -> None:
    """Hard-link the file of O_PATH `fd` as new_dir_fd/new_name."""
    if _linkat(fd, b"", new_dir_fd, new_name, AT_EMPTY_PATH) == 0:
        return
    code = ctypes.get_errno()
    if code not in (errno.ENOENT, errno.EPERM):
        raise OSError(code, os.strerror(code))
    # Kernels before 6.10 allow AT_EMPTY_PATH only with CAP_DAC_READ_SEARCH.
    proc = f"/proc/self/fd/{fd}".encode()
    if _linkat(AT_FDCWD, proc, new_dir_fd, new_name, AT_SYMLINK_FOLLOW) != 0:
        _raise("linkat")


def set_times(fd: int, atime: tuple[int, int] | None, mtime: tuple[int, int] | None,
              now_atime: bool, now_mtime: bool) -> None:
    """utimensat on the file of O_PATH `fd` (through /proc, which works on O_PATH fds)."""

    def spec(value: tuple[int, int] | None, now: bool) -> _Timespec:
        if now:
            return _Timespec(0, UTIME_NOW)
        if value is None:
            return _Timespec(0, UTIME_OMIT)
        return _Timespec(*value)

    times = (_Timespec * 2)(spec(atime, now_atime), spec(mtime, now_mtime))
    if _utimensat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), times, 0) != 0:
        _raise("utimensat")


def ofd_lock(fd: int, lock_type: int, start: int, length: int) -> bool:
    """F_OFD_SETLK; False if a conflicting lock is held (never waits)."""
    request = _FLOCK.pack(lock_type, os.SEEK_SET, start, length, 0)
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, request)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def ofd_getlock(fd: int, lock_type: int, start: int, length: int) -> tuple[int, int, int, int]:
    """F_OFD_GETLK: (type, start, length, pid) of a conflicting lock, type F_UNLCK if none."""
    request = _FLOCK.pack(lock_type, os.SEEK_SET, start, length, 0)
    reply = fcntl.fcntl(fd, F_OFD_GETLK, request)
    found_type, _, found_start, found_length, pid = _FLOCK.unpack(reply)
    return found_type, found_start, found_length, pid
