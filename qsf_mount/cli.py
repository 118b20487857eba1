"""qvm-mount-folder (also qvm-mount): mount a folder of another qube, list or unmount shares.

    qvm-mount-folder [--backend=auto|kernel|fuse] [--read-only] [-o OPTS]
                     [--foreground | --persist] SERVER FOLDER MOUNTPOINT
    qvm-mount-folder --list
    qvm-mount-folder --unmount MOUNTPOINT
    qvm-mount-folder --forget MOUNTPOINT
    qvm-mount-folder --mount-persistent [--retry-for SECONDS]

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
from typing import Final

from qsf_mount import mounts, persistent, startup
from qsf_mount.request import (
    EXIT_DENIED,
    EXIT_FAILURE,
    EXIT_MOUNT_POINT,
    EXIT_NO_BACKEND,
    EXIT_NO_FOLDER,
    EXIT_OK,
    EXIT_POLICY,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    MAX_PATH,
    QUBE_NAME_RE,
    Failure,
    MountRequest,
    build,
    normalise_folder,
)
from qsf_mount.system import Channel, RealSystem, System

__all__ = ["EXIT_USAGE", "MAX_PATH", "QUBE_NAME_RE", "MountRequest", "main",
           "normalise_folder", "parser"]

QREXEC_REFUSED: Final = 126
QREXEC_FAILED: Final = 125
QREXEC_NO_SERVICE: Final = 127

AUTHORIZE: Final = "qsf.AuthorizeFolderAccess"
CONNECT: Final = "qsf.ConnectToFolder"
MAX_REPLY: Final = 64

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


parser = argparse.ArgumentParser(
    prog="qvm-mount-folder",
    formatter_class=argparse.RawDescriptionHelpFormatter,
    description="""\
Mount FOLDER of qube SERVER at MOUNTPOINT in this qube. dom0 asks the user
whether this qube may use that folder (allow once or always, deny, block) and
remembers the answer when asked to. The command returns once the folder is
mounted. To disconnect: fusermount -u MOUNTPOINT (fuse), umount MOUNTPOINT
(kernel), or qvm-mount-folder --unmount MOUNTPOINT. qvm-mount is the same
command under a shorter name.""",
    epilog="""\
backends:
  kernel  Linux v9fs: no daemon, the kernel's page cache; the kernel itself
          parses what the server qube sends
  fuse    qsf-fuse, a userspace 9P client that validates every byte before the
          kernel sees it; file locks stay local to this qube
  auto    kernel when v9fs is usable and mounting is permitted, else fuse

shares at start-up:
  --persist records the share in $XDG_CONFIG_HOME/qsf/shares.json (default
  ~/.config/qsf/shares.json) and mounts it; it stays recorded when mounting
  fails now (say, while the server qube is down). At each session start the systemd
  user unit qsf-mount-persistent.service runs --mount-persistent, which mounts
  every recorded share that is not mounted yet; while a server qube cannot be
  reached it tries again after 2, 4, 8 ... (at most 60) seconds, pausing at
  most --retry-for seconds in all. A denial, a missing folder or a bad mount point
  is not retried: it is logged (journalctl --user -u qsf-mount-persistent)
  and shown as a desktop notification. Answer dom0's question with "always":
  a "once" answer is asked again at every start (and every retry).
  --list marks recorded shares "persistent", and those not mounted
  "not-mounted".

exit status:
  0 done                        5 no such folder (or not a directory) there
  1 any other failure           6 mount point missing, not a directory, or
  2 usage error                   already a mount
  3 denied in dom0              7 the server qube could not be reached
  4 refused by qrexec policy    8 the backend is not available in this qube
  (--mount-persistent: 0 when every recorded share is mounted, else 1)

examples:
  qvm-mount-folder work /home/user/Documents ~/work-docs
  qvm-mount-folder --persist --backend=fuse work /home/user/Shared ~/work
  mount -t qvm work:/home/user/Shared ~/work -o backend=fuse  (see mount.qvm)""",
)
parser.add_argument("--backend", choices=("auto", "kernel", "fuse"), default="auto",
                    help="how to mount (default: auto; see below)")
parser.add_argument("--read-only", action="store_true",
                    help="ask for read-only access; the server qube enforces it (EROFS)")
parser.add_argument(
    "-o", dest="options", default="", metavar="OPTS",
    help="extra mount options, comma-separated (passed to qsf-fuse or to mount -t 9p)",
)
mode = parser.add_mutually_exclusive_group()
mode.add_argument(
    "--foreground", action="store_true", help="stay in the foreground until unmounted (fuse)"
)
mode.add_argument("--persist", action="store_true",
                  help="also record the share, to be mounted at every session start")
action = parser.add_mutually_exclusive_group()
action.add_argument("--list", action="store_true",
                    help="list the shares mounted or recorded in this qube "
                         "(source, mount point, type or not-mounted, persistent)")
action.add_argument("--unmount", metavar="MOUNTPOINT", help="unmount a share")
action.add_argument("--forget", metavar="MOUNTPOINT",
                    help="remove a recorded share (it stays mounted until unmounted)")
action.add_argument("--mount-persistent", action="store_true",
                    help="mount every recorded share that is not mounted (the start-up unit)")
parser.add_argument("--retry-for", type=float, default=startup.RETRY_FOR, metavar="SECONDS",
                    help="with --mount-persistent: the most seconds to pause in all while "
                         "server qubes cannot be reached (default: %(default)g)")
parser.add_argument("server", nargs="?", metavar="SERVER", help="the qube that has the folder")
parser.add_argument("folder", nargs="?", metavar="FOLDER",
                    help="absolute path of the folder in the server qube")
parser.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT",
                    help="an empty directory in this qube")


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, MountRequest | None]:
    """The parsed command line, and its MountRequest when it asks for a mount."""
    args = parser.parse_args(argv)
    positional = [args.server, args.folder, args.mountpoint]
    if not 0 <= args.retry_for <= 86400:
        parser.error("--retry-for takes 0 to 86400 seconds")
    if args.list or args.unmount is not None or args.forget is not None or args.mount_persistent:
        if any(value is not None for value in positional):
            parser.error("--list, --unmount, --forget and --mount-persistent take no "
                         "SERVER FOLDER MOUNTPOINT")
        if args.persist:
            parser.error("--persist goes with SERVER FOLDER MOUNTPOINT")
        return args, None
    if any(value is None for value in positional):
        parser.error("SERVER FOLDER MOUNTPOINT are required")
    try:
        return args, build(server=args.server, folder=args.folder, mountpoint=args.mountpoint,
                           backend=args.backend, read_only=args.read_only,
                           options=args.options, foreground=args.foreground)
    except ValueError as error:
        parser.error(str(error))


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


def check_mount_point(system: System, request: MountRequest) -> None:
    problem = system.mount_point_problem(request.mountpoint)
    if problem is not None:
        raise Failure(EXIT_MOUNT_POINT, f"mount point {request.mountpoint} {problem}")


def mount(system: System, request: MountRequest) -> int:
    check_mount_point(system, request)
    return mount_checked(system, request)


def mount_checked(system: System, request: MountRequest) -> int:
    """mount() after the mount point was found usable."""
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


def _recorded(system: System) -> list[MountRequest]:
    try:
        return persistent.load(system.share_store())
    except persistent.StoreError as error:
        raise Failure(EXIT_FAILURE, str(error)) from None


def _is_mounted(live: Sequence[mounts.Share], request: MountRequest) -> bool:
    source = mounts.source_name(request.server, request.folder)
    return any(s.mountpoint == request.mountpoint and s.source == source for s in live)


def list_shares(system: System) -> int:
    """Live shares (`persistent` when recorded), then recorded ones not mounted."""
    live = mounts.shares(system.read_mounts())
    try:
        recorded, problem = _recorded(system), None
    except Failure as failure:
        recorded, problem = [], failure
    keys = {(mounts.source_name(r.server, r.folder), r.mountpoint) for r in recorded}
    for share in live:
        mark = " persistent" if (share.source, share.mountpoint) in keys else ""
        print(f"{share.source} {share.mountpoint} {share.fstype}{mark}")
    for request in recorded:
        if not _is_mounted(live, request):
            source = mounts.source_name(request.server, request.folder)
            print(f"{source} {request.mountpoint} not-mounted persistent")
    if problem is not None:
        raise problem
    return EXIT_OK


def persist(system: System, request: MountRequest) -> int:
    """Record the share for start-up, then mount it unless it is mounted already."""
    mounted = _is_mounted(mounts.shares(system.read_mounts()), request)
    if not mounted:
        check_mount_point(system, request)
    store = system.share_store()

    def record(shares: list[MountRequest]) -> list[MountRequest]:
        others = [share for share in shares if share.mountpoint != request.mountpoint]
        return [*others, request]

    try:
        persistent.update(store, record)
    except persistent.StoreError as error:
        raise Failure(EXIT_FAILURE, f"{error} (nothing recorded)") from None
    except OSError as error:
        raise Failure(EXIT_FAILURE, f"cannot record the share in {store}: {error}") from None
    print(f"qvm-mount-folder: recorded for start-up in {store}", file=sys.stderr)
    if mounted:
        print(f"qvm-mount-folder: {request.mountpoint} is already mounted", file=sys.stderr)
        return EXIT_OK
    return mount_checked(system, request)


def forget(system: System, mountpoint: str) -> int:
    path = os.path.abspath(mountpoint)
    found = False

    def remove(shares: list[MountRequest]) -> list[MountRequest]:
        nonlocal found
        kept = [share for share in shares if share.mountpoint != path]
        found = len(kept) != len(shares)
        return kept

    store = system.share_store()
    if not store.exists():
        raise Failure(EXIT_MOUNT_POINT, f"{path} is not a recorded share (see --list)")
    try:
        persistent.update(store, remove)
    except persistent.StoreError as error:
        raise Failure(EXIT_FAILURE, str(error)) from None
    except OSError as error:
        raise Failure(EXIT_FAILURE, f"cannot change {store}: {error}") from None
    if not found:
        raise Failure(EXIT_MOUNT_POINT, f"{path} is not a recorded share (see --list)")
    return EXIT_OK


def mount_persistent(system: System, retry_for: float) -> int:
    """Mount every recorded share not mounted yet (qsf-mount-persistent.service)."""
    shares = _recorded(system)
    if not shares:
        startup.log(f"no shares recorded in {system.share_store()}")
        return EXIT_OK

    def attempt(request: MountRequest) -> tuple[int, str]:
        if _is_mounted(mounts.shares(system.read_mounts()), request):
            return EXIT_OK, "already mounted"
        try:
            mount(system, request)
        except Failure as failure:
            return failure.code, str(failure)
        return EXIT_OK, "mounted"

    return startup.mount_all(shares, attempt, system, system.notify,
                             startup.Backoff(total=retry_for))


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
    parsed, request = parse(args)
    system = RealSystem() if system is None else system
    try:
        if request is not None:
            return persist(system, request) if parsed.persist else mount(system, request)
        if parsed.list:
            return list_shares(system)
        if parsed.forget is not None:
            return forget(system, parsed.forget)
        if parsed.mount_persistent:
            return mount_persistent(system, parsed.retry_for)
        return unmount(system, parsed.unmount)
    except Failure as failure:
        print(f"qvm-mount-folder: {failure}", file=sys.stderr)
        return failure.code
    except KeyboardInterrupt:
        print("qvm-mount-folder: interrupted", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
