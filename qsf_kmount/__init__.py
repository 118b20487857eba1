"""The kernel backend: mounting Linux v9fs over trans=fd.

`mount(rfd, wfd, source, mountpoint, ...)` hands a qrexec channel to the kernel:
`mount -t 9p -o trans=fd,rfdno=0,wfdno=1,version=9p2000.L,msize=...` runs with the
channel as its stdin and stdout (sudo closes every fd from 3 up), through
`sudo -n` when not root. `unmount(path)` undoes it; `availability()` says
whether this kernel has v9fs with the fd transport and whether we may mount.

Defaults: msize 1 MiB (the largest trans=fd allows), nosuid,nodev (files from
another qube never get setuid or device powers), access=user (uids travel
unchanged: the qube's user owns and uses the files without sudo), and
cache=mmap, chosen by measurement.

Why cache=mmap. Measured in the test guest (QEMU TCG, 2 vCPUs, a loaded 2-core
host; qsf-server on the host through qsf_sim.mux; tests/guest/
test_guest_cache_modes.py, `-m slow`), milliseconds, 32 MiB dd write with fsync
/ cold 32 MiB read / 200 creates / `ls -l` of them / touching every page of a
32 MiB shared writable mapping:

    kernel 6.1    none   3145 / 3465 / 16893 / 22172 / fails
                  mmap   2354 / 3652 / 18442 / 22834 / 77016
                  loose 41267 / 2912 / 11284 /  2434 / 61241
    kernel 6.12   none   5517 / 3597 / 13571 / 10403 / fails
                  mmap   2740 / 3900 / 13364 / 17164 /  9326
                  loose  4032 / 6573 / 12064 /  2289 /  3991

- none refuses shared writable mappings, which ordinary programs use.
- mmap costs nothing against none for reads, writes and metadata, and maps.
- loose makes writes 13x slower on 6.1 (the kernel most qubes ran until
  recently), and it keeps attributes and directory entries without asking the
  server again: in a shared folder that the server qube changes too, the
  client would see stale data. It wins only on `ls -l` of unchanged folders.
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
