"""Fixtures of the FUSE tests: a work directory, the servers, a live mount.

`mounted` gives a live mount of a fresh export, parametrized over the servers;
it unmounts with `fusermount -u` (asserting success) and checks that neither
the client nor the server outlives the test.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_mounts import (
    SERVERS,
    Mount,
    Server,
    assert_gone,
    is_mounted,
    make_workdir,
    start_mount,
    unmount,
)


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> Server:
    result: Server = request.param
    return result


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = make_workdir()
    try:
        yield path
    finally:
        if is_mounted(path / "mnt"):
            subprocess.run(["fusermount", "-u", "-z", str(path / "mnt")], check=False)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mounted(server: Server, workdir: Path) -> Iterator[Mount]:
    mount = start_mount(server, workdir)
    try:
        yield mount
    finally:
        servers = mount.server_pids()
        unmount(mount)
        assert_gone(servers)


