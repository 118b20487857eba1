"""The `-o` mount options of qsf-fuse, parsed into a checked MountConfig."""

from __future__ import annotations

import math
import os
import pwd
from dataclasses import dataclass, field
from typing import Final

from qsf_p9 import constants as c

from .client import DEFAULT_TIMEOUT
from .inodes import DEFAULT_MAX_FIDS

# Flags handed to the kernel unchanged (pyfuse3.init accepts these).
_KERNEL_FLAGS: Final = frozenset(
    {"ro", "rw", "allow_other", "allow_root", "noexec", "exec", "noatime", "sync", "async",
     "dirsync", "auto_unmount", "default_permissions"}
)
# Always set: the server is another qube, its files must not act as devices or setuid programs.
FORCED_FLAGS: Final = ("nodev", "nosuid")
_REFUSED: Final = frozenset({"dev", "suid"})

OPTIONS_HELP: Final = """\
mount options (-o, comma-separated):
  aname=A            the tree to attach (diod: its export path); default empty
  uname=U            the user name to attach as; default the caller's login name
  timeout=S          seconds the kernel caches entries and attributes (default 1)
  notify_timeout=S   the same while a qsf server pushes change events (default 300)
  noqsf              do not offer qsf's extensions to 9P2000.L (plain 9P2000.L
                     only; they are offered by default and any server may refuse)
  request_timeout=S  seconds to wait for any reply before failing the call with
                     ETIMEDOUT (default 30; 0 waits forever)
  msize=N            the largest 9P message to negotiate (4096..1048576, default 1 MiB)
  fsname=F           the source shown in /proc/mounts (default qsf)
  subtype=S          the file system type is fuse.S (default qsf)
  ignoreqv           use the page cache even for files whose qid.version is 0
  writeback          let the kernel cache writes: write(2) returns once the data
                     is in this qube's page cache and the kernel sends it later,
                     in larger pieces; a write that never reached the server
                     (the server qube died) fails the fsync(2) or close(2) that
                     follows with EIO, so check their results
  max_fids=N         fids kept open on the server for known files (default 4096);
                     beyond that the least recently used are walked again
  default_permissions
                     let the kernel check permissions against the file modes it
                     caches too (by default the server checks them: it is
                     the authority, and the kernel then needs no fresh
                     directory attributes before every lookup)
  ro, allow_other, allow_root, noexec, noatime, sync, dirsync, auto_unmount
                     passed to the kernel
Always set: nodev, nosuid.
Locks (fcntl, flock) on a qsf-fuse mount are local to this client: they are not
sent to the server, so they do not exclude programs in the server qube."""


class UsageError(ValueError):
    """An option the command cannot take."""


@dataclass
class MountConfig:
    mountpoint: str
    aname: bytes = b""
    uname: bytes = b""
    n_uname: int = field(default_factory=os.getuid)
    cache_timeout: float = 1.0
    notify_timeout: float = 300.0
    qsf: bool = True
    request_timeout: float = DEFAULT_TIMEOUT
    msize: int = c.MAX_MSIZE
    fsname: str = "qsf"
    subtype: str = "qsf"
    ignoreqv: bool = False
    writeback: bool = False
    max_fids: int = DEFAULT_MAX_FIDS
    kernel_flags: list[str] = field(default_factory=list)

    def fuse_options(self) -> set[str]:
        """The options for pyfuse3.init."""
        return {
            *FORCED_FLAGS,
            *self.kernel_flags,
            f"fsname={self.fsname}",
            f"subtype={self.subtype}",
        }


def _seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"{name}={value}: not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise UsageError(f"{name}={value}: must be zero or more seconds")
    return seconds


def _integer(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{name}={value}: not a number") from None
    if not low <= number <= high:
        raise UsageError(f"{name}={value}: outside {low}..{high}")
    return number


def _text(name: str, value: str) -> str:
    # These end up in the kernel's comma-separated mount options.
    if not value or any(ch in value for ch in ",\0\n") or len(value) > 1024:
        raise UsageError(f"{name}={value!r}: empty, too long or with a comma or newline")
    return value


def default_uname() -> bytes:
    try:
        return os.fsencode(pwd.getpwuid(os.getuid()).pw_name)
    except KeyError:
        return str(os.getuid()).encode()


def parse_options(option_strings: list[str], mountpoint: str) -> MountConfig:
    """A MountConfig from the -o arguments; UsageError for anything unknown or invalid."""
    config = MountConfig(mountpoint=mountpoint, uname=default_uname())
    for option_string in option_strings:
        for option in option_string.split(","):
            if not option:
                continue
            name, has_value, value = option.partition("=")
            if not has_value:
                if name in _KERNEL_FLAGS:
                    config.kernel_flags.append(name)
                elif name == "ignoreqv":
                    config.ignoreqv = True
                elif name == "writeback":
                    config.writeback = True
                elif name == "noqsf":
                    config.qsf = False
                elif name in FORCED_FLAGS:
                    pass
                elif name in _REFUSED:
                    raise UsageError(f"{name}: refused (files from another qube)")
                else:
                    raise UsageError(f"unknown option {name!r}")
                continue
            if name == "aname":
                config.aname = os.fsencode(value)
            elif name == "uname":
                config.uname = os.fsencode(value)
            elif name == "timeout":
                config.cache_timeout = _seconds(name, value)
            elif name == "notify_timeout":
                config.notify_timeout = _seconds(name, value)
            elif name == "request_timeout":
                config.request_timeout = _seconds(name, value)
            elif name == "msize":
                config.msize = _integer(name, value, c.MIN_MSIZE, c.MAX_MSIZE)
            elif name == "max_fids":
                config.max_fids = _integer(name, value, 16, 1 << 20)
            elif name == "fsname":
                config.fsname = _text(name, value)
            elif name == "subtype":
                config.subtype = _text(name, value)
            else:
                raise UsageError(f"unknown option {name!r}")
    for name, raw in (("aname", config.aname), ("uname", config.uname)):
        if len(raw) > c.MAX_STRING or b"\0" in raw:
            raise UsageError(f"{name}: too long or with a NUL byte")
    return config
