"""An export spanning several devices: qid paths must not alias.

Two fresh tmpfs mounts inside the export number their inodes alike (root 1,
first file 2), the case where st_ino alone would give two files one qid.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from server_p9client import served

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_server.qids import QidMapper


@pytest.fixture
def two_mounts(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount tmpfs")
    mount = support.need_program("mount")
    umount = support.need_program("umount")
    export = tmp_path / "export"
    mounted = []
    try:
        for name in ("one", "two"):
            point = export / name
            point.mkdir(parents=True)
            subprocess.run([mount, "-t", "tmpfs", "-o", "size=1m", "qsf-test", str(point)],
                           check=True)
            mounted.append(point)
            (point / "f").write_bytes(name.encode())
        yield export
    finally:
        for point in mounted:
            subprocess.run([umount, str(point)], check=True)


async def test_same_inode_numbers_on_two_devices_get_distinct_qids(two_mounts: Path) -> None:
    one, two = os.stat(two_mounts / "one" / "f"), os.stat(two_mounts / "two" / "f")
    assert one.st_ino == two.st_ino and one.st_dev != two.st_dev  # the aliasing case
    async with served(two_mounts) as client:
        walked = []
        for name in (b"one", b"two"):
            reply = await client.ok(m.Twalk(0, client.fid(), (name, b"f")))
            walked.append(reply.wqids)
        assert walked[0][0].path != walked[1][0].path  # the mount roots
        assert walked[0][1].path != walked[1][1].path  # the files
        paths = {q.path for qids in walked for q in qids}
        root = (await client.ok(m.Tgetattr(0, c.GETATTR_BASIC))).qid
        assert root.path not in paths and len(paths) == 4
        # Stable: walking again and listing give the same numbers.
        again = await client.ok(m.Twalk(0, client.fid(), (b"two", b"f")))
        assert again.wqids == walked[1]
        listed = {e.name: e.qid.path for e in await client.listdir(b"one")}
        assert listed[b"f"] == walked[0][1].path
        assert await client.read_file(b"two", b"f") == b"two"


def test_qid_mapper_layout() -> None:
    mapper = QidMapper(root_dev=10)
    assert mapper.path(10, 1234) == 1234  # the export's own device keeps st_ino
    assert mapper.path(11, 1234) != mapper.path(12, 1234) != 1234
    assert mapper.path(11, 1234) == mapper.path(11, 1234)
    huge = (1 << 60) + 5
    first = mapper.path(10, huge)
    assert first == mapper.path(10, huge) and first not in (huge, mapper.path(11, huge))
    assert mapper.path(11, huge) != first
    for device in range(300):  # more devices than index bits: still distinct
        mapper.path(1000 + device, 7)
    assert len({mapper.path(1000 + d, 7) for d in range(300)}) == 300
