"""The rig proven with an independent server: Linux v9fs in the guest, diod on the host.

guest kernel -> Unix socket -> mux guest end -> virtio-serial port
-> mux host end -> hub -> diod --rfdno 0 --wfdno 1 on the connection.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import support
from conftest import Rig

pytestmark = [pytest.mark.guest, pytest.mark.diod]


def test_guest_kernel_client_reads_and_writes_through_diod(clean_rig: Rig,
                                                           export: Path) -> None:
    rig = clean_rig
    diod = support.need_program("diod")
    service = rig.new_service([diod, "-f", "-n", "-c", "/dev/null", "-L", "stderr",
                               "-e", str(export), "--rfdno", "0", "--wfdno", "1"])
    mnt = rig.mountpoint()
    # diod caps msize at 64 KiB and wants aname = its export.
    rig.kernel_mount(service, mnt, options=f"aname={export},msize=65536").check()
    assert rig.mounted(mnt)
    (export / "from-host").write_bytes(b"host data\n")
    rig.guest.sh(f"printf 'guest data' > {mnt}/from-guest && cat {mnt}/from-host",
                 uid=support.QUBE_UID).check()
    assert rig.guest.run(["cat", f"{mnt}/from-host"]).check().stdout == b"host data\n"
    written = export / "from-guest"
    assert written.read_bytes() == b"guest data"
    assert os.stat(written).st_uid == support.QUBE_UID
    rig.guest.run(["umount", mnt]).check()
    (server,) = rig.hub.processes[service]
    assert server.wait(timeout=20) == 0
