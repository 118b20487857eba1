"""Running mount(8) and umount(8) for a trans=fd v9fs mount."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterable

from qsf_kmount.errors import KmountError
from qsf_kmount.options import DEFAULT_CACHE, DEFAULT_MSIZE, build_options

MOUNT_TIMEOUT = 60.0
MAX_MESSAGE = 4096


def _program(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise KmountError(f"{name} is not installed")
    return path


def _privileged(argv: list[str]) -> list[str]:
    """argv as root: directly when we are root, else through password-less sudo."""
    if os.geteuid() == 0:
        return argv
    return [_program("sudo"), "-n", "--", *argv]


def _check_source(source: str) -> None:
    if not source or source.startswith("-") or any(c in source for c in "\0\n, \t"):
        raise KmountError(f"invalid mount source: {source!r}")


def _check_mountpoint(mountpoint: str) -> None:
    if not os.path.isabs(mountpoint) or "\0" in mountpoint or "\n" in mountpoint:
        raise KmountError(f"the mount point must be an absolute path: {mountpoint!r}")


def _run(argv: list[str], *, stdin: int | None, stdout: int | None, what: str) -> None:
    with subprocess.Popen(argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                          stdout=stdout if stdout is not None else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, close_fds=True,
                          start_new_session=True) as process:
        try:
            _, stderr = process.communicate(timeout=MOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            # An unhandled SIGTERM is fatal, which ends the kernel's killable wait;
            # sudo passes it on to mount.
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            raise KmountError(f"{what} timed out after {MOUNT_TIMEOUT:.0f} s") from None
    if process.returncode != 0:
        message = stderr[:MAX_MESSAGE].decode(errors="replace").strip()
        raise KmountError(f"{what} failed (exit {process.returncode}): {message}")


def mount(rfd: int, wfd: int, source: str, mountpoint: str, *,
          msize: int = DEFAULT_MSIZE, cache: str = DEFAULT_CACHE, access: str = "user",
          read_only: bool = False, options: str | Iterable[str] = ()) -> None:
    """Mount the 9P2000.L server on the channel (rfd, wfd) at mountpoint.

    mount(8) runs with rfd as its stdin and wfd as its stdout (rfdno=0,wfdno=1),
    as root or through `sudo -n`. The kernel keeps its own reference to the
    channel: the caller may close rfd and wfd afterwards. Returns once mounted;
    raises KmountError with mount's own message otherwise.
    """
    _check_source(source)
    _check_mountpoint(mountpoint)
    option_string = build_options(msize=msize, cache=cache, access=access,
                                  read_only=read_only, options=options)
    argv = _privileged([_program("mount"), "-t", "9p", "-o", option_string, "--",
                        source, mountpoint])
    _run(argv, stdin=rfd, stdout=wfd, what=f"mount {source} on {mountpoint}")


def unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """Unmount a v9fs mount (as root or through sudo); the server then sees EOF."""
    _check_mountpoint(mountpoint)
    argv = _privileged([_program("umount"), *(["-l"] if lazy else []), "--", mountpoint])
    _run(argv, stdin=None, stdout=None, what=f"umount {mountpoint}")
