"""The kernel backend: mounting Linux v9fs over trans=fd.

`mount(rfd, wfd, source, mountpoint, ...)` hands a qrexec channel to the kernel:
`mount -t 9p -o trans=fd,rfdno=0,wfdno=1,version=9p2000.L,msize=...` runs with the
channel as its stdin and stdout (sudo closes every fd from 3 up), through
`sudo -n` when not root. `unmount(path)` undoes it; `availability()` says
whether this kernel has v9fs with the fd transport and whether we may mount.

Defaults: msize 1 MiB (the largest trans=fd allows), nosuid,nodev, access=user
(uids travel unchanged: the qube's user owns and uses the files without sudo),
and cache=mmap: CACHE_CHOICE below is the measurement behind it.
"""

from qsf_kmount.detect import availability, available
from qsf_kmount.errors import KmountError
from qsf_kmount.mount import mount, unmount
from qsf_kmount.options import CACHE_MODES, DEFAULT_CACHE, DEFAULT_MSIZE, build_options

__all__ = [
    "CACHE_MODES",
    "DEFAULT_CACHE",
    "DEFAULT_MSIZE",
    "KmountError",
    "availability",
    "available",
    "build_options",
    "mount",
    "unmount",
]
