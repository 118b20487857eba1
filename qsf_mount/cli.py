"""qvm-mount-folder: mount a folder of another qube, list or unmount shares.

    qvm-mount-folder [--backend=auto|kernel|fuse] [--read-only] [-o OPTS] [--foreground]
                     SERVER FOLDER MOUNTPOINT
    qvm-mount-folder --list
    qvm-mount-folder --unmount MOUNTPOINT

Exit codes (ARCHITECTURE.md): 0 done, 1 other failure, 2 usage, 3 denied in
dom0, 4 refused by qrexec policy, 5 no such folder in the server qube, 6 bad
mount point, 7 server qube unreachable, 8 backend not available.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from qsf_mount import mounts
from qsf_mount.system import Channel, RealSystem, System

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_DENIED: Final = 3
EXIT_POLICY: Final = 4
EXIT_NO_FOLDER: Final = 5
EXIT_MOUNT_POINT: Final = 6
EXIT_UNREACHABLE: Final = 7
EXIT_NO_BACKEND: Final = 8

QREXEC_REFUSED: Final = 126
QREXEC_FAILED: Final = 125
QREXEC_NO_SERVICE: Final = 127

AUTHORIZE: Final = "qsf.AuthorizeFolderAccess"
CONNECT: Final = "qsf.ConnectToFolder"
MAX_PATH: Final = 4096
MAX_REPLY: Final = 64

QUBE_NAME_RE: Final = re.compile(r"\A[a-zA-Z][a-zA-Z0-9_-]{0,30}\Z")
ALLOW_RE: Final = re.compile(rb"\Aallow (?P<fp>[0-9a-f]{32}) (?P<mode>ro|rw)\n\Z")
DENY_RE: Final = re.compile(rb"\Adeny (?P<reason>[a-z]{1,16})\n\Z")
CONNECT_REPLIES: Final = {
    b"error denied": (EXIT_DENIED, "dom0 did not confirm the grant to the server qube"),
    b"error missing": (EXIT_NO_FOLDER, "no such folder in the server qube"),
    b"error notdir": (EXIT_NO_FOLDER, "not a directory in the server qube"),
    b"error internal": (EXIT_FAILURE, "the server qube failed (see its journal)"),
}
DENY_MESSAGES: Final = {
    "user": "denied by the user",
    "block": "this qube is blocked from that server qube",
    "policy": "not allowed (dom0 never shares, a qube cannot mount from itself)",
    "invalid": "dom0 rejected the request as malformed",
    "busy": "another request from this qube is waiting, or too many prompts: try later",
    "internal": "dom0 failed to decide (see its journal)",
    "nogui": ("no dialog could be shown to ask the user: qsf-ask-agent must run in the"
              " graphical session of dom0 (or of this qube's GUI domain, e.g. sys-gui),"
              " where it starts at login; log in again or start it with `qsf-ask-agent &`"
              " (dom0's journal says why)"),
}
# Options qvm-mount-folder sets itself.
RESERVED_OPTIONS: Final = ("fsname", "subtype")


class Failure(Exception):
    """One line for the user and the exit code that goes with it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


parser = argparse.ArgumentParser(
    prog="qvm-mount-folder",
    formatter_class=argparse.RawDescriptionHelpFormatter,
    description="""\
Mount FOLDER of qube SERVER at MOUNTPOINT in this qube. dom0 asks the user
whether this qube may use that folder (allow once or always, deny, block) and
remembers the answer when asked to. The command returns once the folder is
mounted. To disconnect: fusermount -u MOUNTPOINT (fuse), umount MOUNTPOINT
(kernel), or qvm-mount-folder --unmount MOUNTPOINT.""",
    epilog="""\
backends:
  kernel  Linux v9fs: no daemon, the kernel's page cache; the kernel itself
          parses what the server qube sends
  fuse    qsf-fuse, a userspace 9P client that validates every byte before the
          kernel sees it; file locks stay local to this qube
  auto    kernel when v9fs is usable and mounting is permitted, else fuse

exit status:
  0 done                        5 no such folder (or not a directory) there
  1 any other failure           6 mount point missing, not a directory, or
  2 usage error                   already a mount
  3 denied in dom0              7 the server qube could not be reached
  4 refused by qrexec policy    8 the backend is not available in this qube

example:
  qvm-mount-folder work /home/user/Documents ~/work-docs""",
)
parser.add_argument("--backend", choices=("auto", "kernel", "fuse"), default="auto",
                    help="how to mount (default: auto; see below)")
parser.add_argument("--read-only", action="store_true",
                    help="ask for read-only access; the server qube enforces it (EROFS)")
parser.add_argument(
    "-o", dest="options", default="", metavar="OPTS",
    help="extra mount options, comma-separated (passed to qsf-fuse or to mount -t 9p)",
)
parser.add_argument(
    "--foreground", action="store_true", help="stay in the foreground until unmounted (fuse)"
)
action = parser.add_mutually_exclusive_group()
action.add_argument("--list", action="store_true",
                    help="list the shares mounted in this qube (source, mount point, type)")
action.add_argument("--unmount", metavar="MOUNTPOINT", help="unmount a share")
parser.add_argument("server", nargs="?", metavar="SERVER", help="the qube that has the folder")
parser.add_argument("folder", nargs="?", metavar="FOLDER",
                    help="absolute path of the folder in the server qube")
parser.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT",
                    help="an empty directory in this qube")


@dataclass(frozen=True, slots=True)
class MountRequest:
    server: str
    folder: bytes
    mountpoint: str
    backend: str
    read_only: bool
    options: str
    foreground: bool


def normalise_folder(untrusted_folder: str) -> bytes:
    """An absolute folder without empty or `.` components; ValueError otherwise."""
    folder = os.fsencode(untrusted_folder)
    if not folder.startswith(b"/"):
        raise ValueError("FOLDER must be an absolute path")
    if b"\0" in folder:
        raise ValueError("FOLDER contains NUL")
    parts = [part for part in folder.split(b"/") if part not in (b"", b".")]
    if b".." in parts:
        raise ValueError("FOLDER must not contain '..'")
    folder = b"/" + b"/".join(parts)
    if len(folder) > MAX_PATH:
        raise ValueError(f"FOLDER is longer than {MAX_PATH} bytes")
    return folder


def parse(argv: Sequence[str] | None) -> argparse.Namespace | MountRequest:
    """The parsed command line: a MountRequest, or the namespace of --list/--unmount."""
    args = parser.parse_args(argv)
    positional = [args.server, args.folder, args.mountpoint]
    if args.list or args.unmount is not None:
        if any(value is not None for value in positional):
            parser.error("--list and --unmount take no SERVER FOLDER MOUNTPOINT")
        return args
    if any(value is None for value in positional):
        parser.error("SERVER FOLDER MOUNTPOINT are required")
    if not QUBE_NAME_RE.match(args.server):
        parser.error(f"{args.server!r} is not a qube name")
    try:
        folder = normalise_folder(args.folder)
    except ValueError as error:
        parser.error(str(error))
    options = [option for option in args.options.split(",") if option]
    for option in options:
        if option.split("=", 1)[0] in RESERVED_OPTIONS:
            parser.error(f"-o {option}: qvm-mount-folder sets this option itself")
        if not option.isprintable():
            parser.error("-o: options must be printable")
    return MountRequest(
        server=args.server,
        folder=folder,
        mountpoint=os.path.abspath(args.mountpoint),
        backend=args.backend,
        read_only=args.read_only,
        options=",".join(options),
        foreground=args.foreground,
    )


def _qrexec(system: System) -> str:
    program = system.find_program("qrexec-client-vm")
    if program is None:
        raise Failure(EXIT_FAILURE, "qrexec-client-vm not found: is this a Qubes qube?")
    return program


def authorize(system: System, request: MountRequest) -> tuple[str, str]:
    """Ask dom0: (fingerprint, granted mode) or Failure."""
    mode = "ro" if request.read_only else "rw"
    data = request.server.encode("ascii") + b"\n" + _b64(request.folder) + mode.encode() + b"\n"
    result = system.call([_qrexec(system), "dom0", AUTHORIZE], data, MAX_REPLY + 1)
    if result.status == QREXEC_REFUSED:
        raise Failure(EXIT_POLICY, f"qrexec policy refused {AUTHORIZE} (is qsf installed in dom0?)")
    if result.status == QREXEC_NO_SERVICE:
        raise Failure(EXIT_FAILURE, f"dom0 has no {AUTHORIZE} service: install qsf in dom0")
    if result.status != 0:
        raise Failure(EXIT_FAILURE, f"asking dom0 failed (qrexec exit {result.status})")
    allowed = ALLOW_RE.match(result.stdout)
    if allowed is not None:
        return allowed["fp"].decode("ascii"), allowed["mode"].decode("ascii")
    denied = DENY_RE.match(result.stdout)
    if denied is not None:
        reason = denied["reason"].decode("ascii")
        # Denied by a decision; a malformed request or a failure in dom0 is not one.
        code = EXIT_FAILURE if reason in ("invalid", "internal") else EXIT_DENIED
        raise Failure(code, f"dom0: {DENY_MESSAGES.get(reason, f'denied ({reason})')}")
    raise Failure(EXIT_FAILURE, f"unexpected answer from dom0: {result.stdout[:MAX_REPLY]!r}")


def _b64(folder: bytes) -> bytes:
    return base64.b64encode(folder) + b"\n"


def connect(system: System, request: MountRequest, fingerprint: str) -> tuple[Channel, str]:
    """Open the channel to the server's service and read its `ok` line."""
    argv = [_qrexec(system), request.server, f"{CONNECT}+{fingerprint}"]
    try:
        channel = system.open_channel(argv)
    except OSError as error:
        raise Failure(EXIT_FAILURE, f"cannot run qrexec-client-vm: {error.strerror}") from None
    try:
        channel.send(_b64(request.folder))
        line = channel.read_line(MAX_REPLY)
    except OSError:
        line = None
    if line in (b"ok ro", b"ok rw"):
        assert line is not None
        return channel, line[3:].decode("ascii")
    if line is None:
        status = channel.wait()
        channel.abort()
        if status == QREXEC_REFUSED:
            raise Failure(EXIT_POLICY, f"qrexec policy refused {CONNECT} to {request.server}")
        if status in (QREXEC_FAILED, QREXEC_NO_SERVICE):
            raise Failure(
                EXIT_UNREACHABLE,
                f"cannot reach {CONNECT} in qube {request.server} (qrexec exit {status})",
            )
        raise Failure(EXIT_UNREACHABLE, f"qube {request.server} closed the connection")
    channel.abort()
    code, message = CONNECT_REPLIES.get(
        line, (EXIT_FAILURE, f"unexpected answer from {request.server}: {line[:MAX_REPLY]!r}")
    )
    raise Failure(code, f"{request.server}: {message}")


def choose_backend(system: System, request: MountRequest) -> str:
    """`kernel` or `fuse`, or Failure(8) when the requested one is missing.

    auto takes the kernel when v9fs is usable and we may mount, else fuse.
    """
    if request.backend == "fuse":
        return _fuse_backend(system)
    usable, reason = system.kernel_availability()
    if request.backend == "kernel":
        if not usable:
            raise Failure(EXIT_NO_BACKEND, f"the kernel backend is not available: {reason}")
        return "kernel"
    return "kernel" if usable else _fuse_backend(system)


def _fuse_backend(system: System) -> str:
    if system.find_program("qsf-fuse") is None:
        raise Failure(EXIT_NO_BACKEND, "the fuse backend (qsf-fuse) is not installed")
    return "fuse"


def fuse_argv(program: str, request: MountRequest, channel: Channel) -> list[str]:
    options = [f"fsname={mounts.source_name(request.server, request.folder)}", "subtype=qsf"]
    if request.read_only:
        options.append("ro")
    if request.options:
        options.append(request.options)
    argv = [program, "--rfd", str(channel.read_fd), "--wfd", str(channel.write_fd)]
    if request.foreground:
        argv.append("--foreground")
    return [*argv, "-o", ",".join(options), request.mountpoint]


def mount(system: System, request: MountRequest) -> int:
    problem = system.mount_point_problem(request.mountpoint)
    if problem is not None:
        raise Failure(EXIT_MOUNT_POINT, f"mount point {request.mountpoint} {problem}")
    backend = choose_backend(system, request)
    # auto says what it chose once mounted (or, in the foreground, once started),
    # so that a failure stays one line.
    choice = f"qvm-mount-folder: the {backend} backend (auto)" if request.backend == "auto" else ""
    fingerprint, _granted = authorize(system, request)
    channel, _mode = connect(system, request, fingerprint)
    # A ro grant is enforced by the server; only a ro request adds `ro` here.
    try:
        if backend == "kernel":
            kernel_mount = system.kernel_mount()
            if kernel_mount is None:
                raise Failure(EXIT_NO_BACKEND, "the kernel backend is not installed")
            kernel_mount(
                rfd=channel.read_fd,
                wfd=channel.write_fd,
                mountpoint=request.mountpoint,
                source=mounts.source_name(request.server, request.folder),
                read_only=request.read_only,
                options=request.options,
            )
            status = 0
        else:
            program = system.find_program("qsf-fuse")
            assert program is not None
            argv = fuse_argv(program, request, channel)
            if choice and request.foreground:
                print(choice, file=sys.stderr)
                choice = ""
            status = system.run(argv, pass_fds=(channel.read_fd, channel.write_fd))
    except OSError as error:
        channel.abort()
        raise Failure(EXIT_FAILURE, f"mounting failed: {error}") from None
    except BaseException:
        channel.abort()
        raise
    if status != 0 and not request.foreground:
        channel.abort()
        raise Failure(EXIT_FAILURE, f"the {backend} backend failed to mount (exit {status})")
    channel.detach()
    if choice and status == 0:
        print(choice, file=sys.stderr)
    return EXIT_OK if status == 0 else EXIT_FAILURE


def list_shares(system: System) -> int:
    for share in mounts.shares(system.read_mounts()):
        print(f"{share.source} {share.mountpoint} {share.fstype}")
    return EXIT_OK


def unmount(system: System, mountpoint: str) -> int:
    path = os.path.abspath(mountpoint)
    share = next((s for s in mounts.shares(system.read_mounts()) if s.mountpoint == path), None)
    if share is None:
        raise Failure(EXIT_MOUNT_POINT, f"{path} is not a qsf share (see --list)")
    if not share.is_fuse:
        try:
            system.kernel_unmount(path)
        except OSError as error:
            raise Failure(EXIT_FAILURE, f"unmounting {path} failed: {error}") from None
        return EXIT_OK
    program = system.find_program("fusermount3") or system.find_program("fusermount")
    argv = [program or "fusermount", "-u", path]
    status = system.run(argv)
    if status != 0:
        raise Failure(EXIT_FAILURE, f"unmounting {path} failed ({argv[0]} exit {status})")
    return EXIT_OK


def main(args: Sequence[str] | None = None, system: System | None = None) -> int:
    parsed = parse(args)
    system = RealSystem() if system is None else system
    try:
        if isinstance(parsed, MountRequest):
            return mount(system, parsed)
        if parsed.list:
            return list_shares(system)
        return unmount(system, parsed.unmount)
    except Failure as failure:
        print(f"qvm-mount-folder: {failure}", file=sys.stderr)
        return failure.code
    except KeyboardInterrupt:
        print("qvm-mount-folder: interrupted", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
