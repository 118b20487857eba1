"""Measure v9fs cache modes against qsf-server in the guest (slow; run by hand).

    CI=true /opt/qsf-venv/bin/pytest -m slow -s tests/guest/test_guest_cache_modes.py

Prints, per kernel and cache mode, the milliseconds of: a 32 MiB write (fsync), a
cold 32 MiB read, 200 creates, `ls -l` of them, and a shared writable mmap.
qsf_kmount's docstring records the figures behind the default cache mode.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import Rig
from test_guest_kernel import mount_share

pytestmark = [pytest.mark.guest, pytest.mark.slow]

WORKLOAD = r"""
t() { s=$(date +%s%N); if "$@" >/dev/null 2>&1; then e=$(date +%s%N);
      echo "$label $(( (e - s) / 1000000 ))"; else echo "$label failed"; fi; }
label=write t dd if=/dev/zero of=big bs=1M count=32 conv=fsync
echo 3 > /proc/sys/vm/drop_caches
label=read t dd if=big of=/dev/null bs=1M
mkdir many
label=create t sh -c 'for i in $(seq 200); do : > many/f$i; done'
label=ls t ls -l many
label=mmap t python3 -c 'import mmap
f = open("big", "r+b"); m = mmap.mmap(f.fileno(), 0)
for i in range(0, len(m), 4096): m[i] = 1
m.flush()'
"""


@pytest.mark.parametrize("cache", ["none", "mmap", "loose"])
def test_guest_cache_mode_figures(clean_rig: Rig, export: Path, cache: str) -> None:
    share = mount_share(clean_rig, export, options=f"cache={cache}")
    result = share.sh(WORKLOAD, uid=None, timeout=900).check()
    figures = dict(re.findall(r"^(\w+) (\d+|failed)$", result.out, re.MULTILINE))
    print(f"\nkernel {clean_rig.label} cache={cache}: "
          + " ".join(f"{k}={v}{'' if v == 'failed' else 'ms'}" for k, v in figures.items()))
    assert set(figures) == {"write", "read", "create", "ls", "mmap"}, result.out
    # A shared writable mapping needs a page cache: cache=none refuses it.
    assert (figures["mmap"] == "failed") == (cache == "none"), figures
    assert all(v != "failed" for k, v in figures.items() if k != "mmap"), figures
