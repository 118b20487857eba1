"""Building and validating the v9fs mount options of a trans=fd mount."""

from __future__ import annotations

import re
from collections.abc import Iterable

from qsf_kmount.errors import KmountError

DEFAULT_MSIZE = 1024 * 1024      # the kernel's trans=fd maximum
MIN_MSIZE = 4096
CACHE_MODES = frozenset({"none", "mmap", "loose", "fscache", "readahead"})
DEFAULT_CACHE = "mmap"           # measured: see the package docstring
ACCESS_MODES = frozenset({"user", "any", "client"})

# The channel sits on mount's stdin and stdout (sudo closes fds from 3 up).
FIXED = ("trans=fd", "rfdno=0", "wfdno=1", "version=9p2000.L")
# Options a caller may add: generic flags that only restrict, and v9fs's own.
# suid and dev are absent on purpose: files from another qube never get them.
FLAGS = frozenset({"ro", "rw", "noexec", "exec", "noatime", "relatime", "nodiratime",
                   "lazytime", "sync", "dirsync", "posixacl", "noextend", "nodevmap",
                   "ignoreqv"})
VALUED = frozenset({"uname", "aname", "dfltuid", "dfltgid", "locktimeout", "cachetag", "debug"})
# Options set through their own parameter; an extra `-o` may override them.
TUNABLE = frozenset({"msize", "cache", "access"})
VALUE = re.compile(r"[A-Za-z0-9_./@:+-]{1,4096}")
NUMBER = re.compile(r"[0-9]{1,10}")


def _split(options: str | Iterable[str]) -> list[str]:
    items = options.split(",") if isinstance(options, str) else list(options)
    return [item for item in items if item]


def build_options(*, msize: int = DEFAULT_MSIZE, cache: str = DEFAULT_CACHE,
                  access: str = "user", read_only: bool = False,
                  options: str | Iterable[str] = ()) -> str:
    """The -o string for `mount -t 9p`; raise KmountError on anything invalid.

    `options` are extra comma-separated options (what a user gives with -o);
    msize=, cache= and access= among them override the parameters.
    """
    tunables: dict[str, str] = {"msize": str(msize), "cache": cache, "access": access}
    extra: list[str] = []
    for item in _split(options):
        name, has_value, value = item.partition("=")
        if name in TUNABLE and has_value:
            tunables[name] = value
        elif not has_value and name in FLAGS:
            extra.append(name)
        elif has_value and name in VALUED:
            if not VALUE.fullmatch(value):
                raise KmountError(f"invalid value for mount option {name}: {value!r}")
            extra.append(item)
        else:
            raise KmountError(f"mount option not allowed: {item!r}")
    msize_text = tunables["msize"]
    if not NUMBER.fullmatch(msize_text) or not MIN_MSIZE <= int(msize_text) <= DEFAULT_MSIZE:
        raise KmountError(f"msize must be a number from {MIN_MSIZE} to {DEFAULT_MSIZE}: "
                          f"{msize_text!r}")
    if tunables["cache"] not in CACHE_MODES:
        raise KmountError(f"cache must be one of {', '.join(sorted(CACHE_MODES))}: "
                          f"{tunables['cache']!r}")
    access_mode = tunables["access"]
    if access_mode not in ACCESS_MODES and not NUMBER.fullmatch(access_mode):
        raise KmountError(f"access must be user, any, client or a uid: {access_mode!r}")
    flags = ["nosuid", "nodev"] + (["ro"] if read_only else [])
    return ",".join([*FIXED, f"msize={int(msize_text)}", f"cache={tunables['cache']}",
                     f"access={access_mode}", *flags, *extra])
