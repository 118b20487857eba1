"""Is the kernel's v9fs with the fd transport usable here, and may we mount?"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

PROC_FILESYSTEMS = Path("/proc/filesystems")
SYS_MODULE = Path("/sys/module")
MODULES = Path("/lib/modules")
# Before 6.1 the fd transport was part of 9pnet; since then it is 9pnet_fd.
FD_SPLIT = (6, 1)


def _kernel_version(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _has_module(release: str, name: str) -> bool:
    """Module `name` is loaded, built in, or installed for kernel `release`."""
    if (SYS_MODULE / name).is_dir():
        return True
    moddir = MODULES / release
    try:
        if re.search(rf"/{re.escape(name)}\.ko\b", (moddir / "modules.builtin").read_text()):
            return True
    except OSError:
        pass
    return any(moddir.glob(f"kernel/**/{name}.ko*"))


def _filesystem_registered(name: str) -> bool:
    try:
        lines = PROC_FILESYSTEMS.read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[-1:] == [name] for line in lines)


def v9fs_problem(release: str | None = None) -> str | None:
    """Why v9fs over trans=fd is missing from this kernel (or `release`), or None."""
    release = release or os.uname().release
    if not (_filesystem_registered("9p") or _has_module(release, "9p")):
        return f"the kernel ({release}) has no 9p file system"
    if _kernel_version(release) >= FD_SPLIT:
        if not _has_module(release, "9pnet_fd"):
            return f"the kernel ({release}) has no 9p fd transport (9pnet_fd)"
    elif not _has_module(release, "9pnet") and not _filesystem_registered("9p"):
        return f"the kernel ({release}) has no 9pnet"
    return None


def privilege_problem() -> str | None:
    """Why this process may not mount, or None (root, or password-less sudo)."""
    if os.geteuid() == 0:
        return None
    sudo = shutil.which("sudo")
    if sudo is None:
        return "not root and sudo is not installed"
    try:
        result = subprocess.run([sudo, "-n", "true"], stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"sudo failed: {error}"
    if result.returncode != 0:
        return "not root and sudo needs a password"
    return None


def availability() -> tuple[bool, str]:
    """(usable, reason): the kernel backend works here, or why it does not."""
    problem = v9fs_problem() or privilege_problem()
    if problem is not None:
        return False, problem
    return True, "the kernel has v9fs with trans=fd and mounting is permitted"


def available() -> bool:
    return availability()[0]
