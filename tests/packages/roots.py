"""Clean Debian root file systems (mmdebstrap), cached between runs, and a way
to run commands inside one (a private mount namespace with /proc, /sys and
/dev, then chroot). /tmp is the root's own folder, on the host's disk.

A cached root holds only Debian's minimal system and the test tools (pytest,
hypothesis, man-db, diod...), never qsf's own dependencies: those come from
apt when the test installs the package, so apt has to resolve every one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import support

DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")

# What the tests need in the root, besides what `apt install ./qsf*.deb` brings.
TEST_TOOLS = (
    "python3-pytest", "python3-hypothesis", "python3-pytest-timeout",
    "man-db", "diod", "stress-ng", "attr", "util-linux", "mount", "ca-certificates",
)


@dataclass(frozen=True)
class Suite:
    name: str                       # Debian codename
    python: str                     # its python3 (X.Y): where the .pth goes
    extra_tools: tuple[str, ...]    # test tools only this suite packages


SUITES = (
    # Debian 12 has no python3-pytest-trio: the test copies pytest_trio in.
    Suite("bookworm", "3.11", ()),
    Suite("trixie", "3.13", ("python3-pytest-trio",)),
)


def cache_root() -> Path:
    """$QSF_PACKAGES_CACHE, else /var/cache/qsf-packages (root), else the user's cache."""
    if "QSF_PACKAGES_CACHE" in os.environ:
        return Path(os.environ["QSF_PACKAGES_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/qsf-packages")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "qsf-packages"


def debian_mirror() -> str:
    text = DEBIAN_SOURCES.read_text() if DEBIAN_SOURCES.exists() else ""
    match = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.MULTILINE)
    return match.group(1) if match else "http://deb.debian.org/debian"


def run(argv: Sequence[str], timeout: float = 900,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                            check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} exited {result.returncode}:\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result  # type: ignore[no-any-return]


def tarball(suite: Suite) -> Path:
    """The cached root of `suite` as a tarball, made with mmdebstrap when missing."""
    tools = sorted((*TEST_TOOLS, *suite.extra_tools))
    key = hashlib.sha256(" ".join([suite.name, *tools]).encode()).hexdigest()[:12]
    path = cache_root() / f"{suite.name}-{key}.tar"
    if path.exists():
        return path
    mmdebstrap = support.need_program("mmdebstrap")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.tar")
    # variant apt: Essential packages and apt, nothing else (no python3).
    run([mmdebstrap, "--variant=apt", "--mode=root", f"--include={','.join(tools)}",
         "--aptopt=Acquire::Retries \"3\"", suite.name, str(partial),
         f"deb {debian_mirror()} {suite.name} main"], timeout=1200)
    partial.rename(path)
    for stale in path.parent.glob(f"{suite.name}-*.tar"):
        if stale != path:
            stale.unlink()
    return path


class Root:
    """A fresh copy of a cached root under a temporary folder."""

    def __init__(self, suite: Suite, parent: Path) -> None:
        self.suite = suite
        self.path = Path(tempfile.mkdtemp(prefix=f"{suite.name}-", dir=parent))
        run(["tar", "-xf", str(tarball(suite)), "-C", str(self.path)])
        etc = self.path / "etc"
        shutil.copy("/etc/resolv.conf", etc / "resolv.conf")
        # What a booted Debian has and a bare root lacks: mtab (fusermount3
        # reads it) and the qube user, uid 1000 (diod looks its uid up).
        (etc / "mtab").symlink_to("../proc/self/mounts")
        with open(etc / "passwd", "a") as passwd, open(etc / "group", "a") as group:
            passwd.write(f"user:x:{support.QUBE_UID}:{support.QUBE_GID}::/home/user:/bin/sh\n")
            group.write(f"user:x:{support.QUBE_GID}:\n")

    def sh(self, script: str, timeout: float = 900,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a shell script in the root as root; raise with its output if it fails."""
        inner = (
            # The root a mount point of its own, as / is (unshare --propagation needs it).
            "set -e; r=$1; shift; mount --bind \"$r\" \"$r\"; "
            "mount -t proc proc \"$r/proc\"; mount --rbind /sys \"$r/sys\"; "
            "mount --rbind /dev \"$r/dev\"; "
            "exec chroot \"$r\" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "
            "HOME=/root LANG=C.UTF-8 \"$@\""
        )
        variables = [f"{k}={v}" for k, v in (env or {}).items()]
        return run([support.need_program("unshare"), "--mount", "--pid", "--fork",
                    "--propagation", "private", "sh", "-c", inner, "sh", str(self.path),
                    *variables, "sh", "-c", "set -e\n" + script], timeout=timeout)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
