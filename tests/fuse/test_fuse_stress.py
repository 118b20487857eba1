"""stress-ng's file-system stressors on the mount: no failure may be reported.

Against qsf-server the client, the server and stress-ng all run as the qube's
user (uid 1000), as in a qube. diod serves as root; its fids stand for paths,
so fstat of an unlinked open file fails there and the hdd and seek stressors
(which do exactly that) are left out for it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import support
from fuse_mounts import Server, assert_gone, start_mount, unmount

pytestmark = pytest.mark.fuse

STRESSORS = ["dentry", "dir", "dirdeep", "rename", "link", "symlink", "xattr", "fallocate",
             "utime", "open", "seek", "hdd"]
PATH_BASED_FAILURES = {"seek", "hdd"}  # fstat after unlink


@pytest.mark.parametrize(
    ("server_name", "options"),
    [
        pytest.param("qsf", (), id="qsf"),
        pytest.param("diod", (), id="diod", marks=pytest.mark.diod),
        # Few fids: known inodes keep losing theirs and walking again by name.
        pytest.param("qsf", ("max_fids=16",), id="qsf-few-fids"),
    ],
)
def test_stress_ng_filesystem_stressors(
    server_name: str, options: tuple[str, ...], workdir: Path
) -> None:
    stress_ng = support.need_program("stress-ng")
    as_user = server_name == "qsf" and os.geteuid() == 0
    mount = start_mount(Server(server_name), workdir, options, as_user=as_user)
    servers = mount.server_pids()
    try:
        stressors = [name for name in STRESSORS
                     if server_name == "qsf" or name not in PATH_BASED_FAILURES]
        argv = [stress_ng, "--temp-path", str(mount.mnt), "--timeout", "4s",
                "--dentries", "256", "--dir-dirs", "256", "--dirdeep-inodes", "300",
                "--hdd-bytes", "8M", "--metrics-brief"]
        for name in stressors:
            argv += [f"--{name}", "1"]
        if as_user:
            argv = support.as_user(argv)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=240,
                                cwd=workdir)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output + mount.log_text()
        assert "fail:" not in output and "error:" not in output, output
        assert "successful run completed" in output, output
        for name in stressors:
            assert f"] {name} " in output, f"{name} did not run:\n{output}"
        # Nothing left behind by the stressors, and the client never crashed.
        assert mount.alive()
        assert os.listdir(mount.export) == []
        log = mount.log_text()
        assert "Traceback" not in log and " ERROR " not in log and "unknown inode" not in log, log
    finally:
        unmount(mount)
        assert_gone(servers)
