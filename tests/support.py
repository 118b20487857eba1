"""Helpers shared by the test areas (import as `support`)."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

ON_CI = os.environ.get("CI") == "true"
REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# The ordinary user of every Qubes qube.
QUBE_UID = 1000
QUBE_GID = 1000


def missing(what: str) -> None:
    """Skip for a missing dependency, but fail under CI, where it must be there."""
    message = f"missing dependency: {what} (run scripts/install.sh)"
    if ON_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def need_program(name: str) -> str:
    """The path of program `name`, or skip/fail as `missing` does."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        missing(f"program {name}")
    assert path is not None
    return path


def need_fuse() -> None:
    """Make /dev/fuse usable by everyone, as udev does in a qube."""
    try:
        mode = os.stat("/dev/fuse").st_mode
    except FileNotFoundError:
        missing("/dev/fuse")
        return
    if not stat.S_ISCHR(mode):
        missing("/dev/fuse as a character device")
    if stat.S_IMODE(mode) != 0o666 and os.geteuid() == 0:
        os.chmod("/dev/fuse", 0o666)


def as_user(argv: Sequence[str], uid: int = QUBE_UID, gid: int = QUBE_GID) -> list[str]:
    """Prefix argv so that it runs as an unprivileged user, without supplementary groups."""
    if os.geteuid() != 0:
        return list(argv)
    return [need_program("setpriv"), f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--", *argv]


def venv_program(name: str) -> str:
    """A console script of this project, from the virtualenv running the tests."""
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install the project (scripts/install.sh)")
    return str(path)
