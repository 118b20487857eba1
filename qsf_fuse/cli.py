"""qsf-fuse: mount a 9P2000.L server reachable on file descriptors or through a command.

    qsf-fuse [-o OPTIONS] [--foreground] (--rfd R --wfd W | --exec "CMD ARG...") MOUNTPOINT

Without --foreground the command returns once the mount is live (exit 0) and a
background process keeps serving it; it exits when the folder is unmounted
(`fusermount -u MOUNTPOINT`), which closes the channel. Exit 1 and one line on
stderr if the mount could not be made, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3
import trio

from .client import P9Client, P9Error
from .fs import FsOptions, Operations
from .options import OPTIONS_HELP, MountConfig, UsageError, parse_options

log = logging.getLogger("qsf_fuse")

# How long the command spawned by --exec may take to exit once the channel closed.
EXEC_EXIT_GRACE = 5.0
# How long the fids may take to be clunked at unmount before the channel closes anyway.
SHUTDOWN_GRACE = 2.0
# How often the mount table is checked for our mount (see _watch_unmount).
UNMOUNT_POLL = 0.5

parser = argparse.ArgumentParser(
    prog="qsf-fuse",
    description="Mount a 9P2000.L file server (a Qubes shared folder) with FUSE.",
    epilog=OPTIONS_HELP,
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                    help="comma-separated mount options (below)")
parser.add_argument("-f", "--foreground", action="store_true",
                    help="serve in this process instead of returning once mounted")
parser.add_argument("--rfd", type=int, metavar="R", help="read 9P replies from this fd")
parser.add_argument("--wfd", type=int, metavar="W", help="write 9P requests to this fd")
parser.add_argument("--exec", dest="exec_command", metavar='"CMD ARG..."',
                    help="run this command (split like a shell would, no shell runs it) "
                    "and speak 9P on its stdin/stdout")
parser.add_argument("--log-file", metavar="PATH",
                    help="where the background process logs (default: nowhere)")
parser.add_argument("--debug", action="store_true", help="log every step")
parser.add_argument("mountpoint", metavar="MOUNTPOINT")


class MountError(Exception):
    """The mount could not be made; the message says why."""


@dataclass
class Channel:
    """The two ends of the byte stream to the server, and the process behind it."""

    read_fd: int
    write_fd: int
    process: subprocess.Popen[bytes] | None = None

    def close_process(self, grace: float = EXEC_EXIT_GRACE) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("%s did not exit after the channel closed: killing it",
                        self.process.args)
            self.process.kill()
            self.process.wait()


def open_channel(args: argparse.Namespace) -> Channel:
    if args.exec_command is not None:
        try:
            argv = shlex.split(args.exec_command)
        except ValueError as error:
            raise UsageError(f"--exec: {error}") from None
        if not argv:
            raise UsageError("--exec: empty command")
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                argv, stdin=theirs.fileno(), stdout=theirs.fileno(), close_fds=True
            )
        except OSError as error:
            ours.close()
            raise MountError(f"cannot run {argv[0]}: {error.strerror}") from None
        finally:
            theirs.close()
        fd = ours.detach()
        return Channel(fd, os.dup(fd), process)
    for name, fd in (("--rfd", args.rfd), ("--wfd", args.wfd)):
        try:
            os.fstat(fd)
        except OSError as error:
            raise MountError(f"{name} {fd}: {error.strerror}") from None
    # Own private copies: FdStream makes them non-blocking and closes them.
    read_fd, write_fd = os.dup(args.rfd), os.dup(args.wfd)
    for fd in {args.rfd, args.wfd}:
        os.close(fd)
    return Channel(read_fd, write_fd)


async def _watch_signals(
    terminate: Callable[[], None],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for _ in signals:
            log.info("signal received: unmounting")
            terminate()


def _mount_id(mountpoint: str) -> str | None:
    """The id of the newest mount on mountpoint in this mount namespace (/proc/self/mountinfo).

    Read from the kernel's table, never by a stat of the mount point: that
    would be a request to ourselves.
    """
    escaped = (mountpoint.replace("\\", "\\134").replace(" ", "\\040")
               .replace("\t", "\\011").replace("\n", "\\012"))
    found = None
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split(" ", 5)
            if len(fields) > 4 and fields[4] == escaped:
                found = fields[0]
    return found


async def _watch_unmount(
    mountpoint: str, mount_id: str, gone: list[bool], terminate: Callable[[], None]
) -> None:
    """End the main loop once our mount left this namespace's mount table.

    The kernel ends the FUSE session only when the last copy of the mount
    goes: a process that made a private mount namespace meanwhile (unshare,
    a systemd service with PrivateTmp) keeps one, and `fusermount -u` here
    would leave us serving it for ever.
    """
    while True:
        await trio.sleep(UNMOUNT_POLL)
        if mount_id not in _mount_ids():  # /proc: no request to ourselves
            log.info("%s was unmounted (a copy may live on in another mount namespace)",
                     mountpoint)
            gone.append(True)
            terminate()
            return


def _mount_ids() -> set[str]:
    with open("/proc/self/mountinfo") as table:
        return {line.split(" ", 1)[0] for line in table}


async def _serve(config: MountConfig, channel: Channel, ready: Callable[[], None]) -> bool:
    """Mount and serve; returns whether the server stopped answering."""
    failure: MountError | None = None
    async with trio.open_nursery() as nursery:
        client = P9Client(
            trio.lowlevel.FdStream(channel.read_fd),
            trio.lowlevel.FdStream(channel.write_fd),
            timeout=config.request_timeout,
        )
        await client.start(nursery)
        try:
            failure = await _mount_and_serve(config, client, nursery, ready)
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return client.unresponsive


async def _mount_and_serve(
    config: MountConfig, client: P9Client, nursery: trio.Nursery, ready: Callable[[], None]
) -> MountError | None:
    """Attach, mount and serve until unmounted; the reason if the mount was not made."""
    try:
        await client.negotiate(config.msize, qsf=config.qsf)
        root_fid, root_qid = await client.attach(config.uname, config.aname, config.n_uname)
    except P9Error as error:
        return MountError(f"the server refused the session: {error.args[-1]}")
    operations = Operations(
        client, root_fid, root_qid, nursery,
        FsOptions(cache_timeout=config.cache_timeout, ignoreqv=config.ignoreqv,
                  max_fids=config.max_fids, notify_timeout=config.notify_timeout,
                  writeback=config.writeback),
    )
    # The watchers call pyfuse3.terminate(), only while the session lives: after
    # pyfuse3.close it would use freed memory.
    live = [True]

    def terminate() -> None:
        if live[0]:
            pyfuse3.terminate()

    # Listening before the mount appears: a signal sent as soon as it is seen is
    # handled (it is taken once pyfuse3.main runs), not fatal.
    await nursery.start(_watch_signals, terminate)
    try:
        pyfuse3.init(operations, config.mountpoint, config.fuse_options())
    except RuntimeError as error:
        live[0] = False
        return MountError(f"cannot mount on {config.mountpoint}: {error}")
    notifying = trio.CancelScope()
    if client.qsf:
        nursery.start_soon(_notify, operations, notifying)
    gone: list[bool] = []
    mount_id = _mount_id(config.mountpoint)
    if mount_id is not None:
        nursery.start_soon(_watch_unmount, config.mountpoint, mount_id, gone, terminate)
    try:
        ready()
        await pyfuse3.main()
    finally:
        notifying.cancel()
        live[0] = False
        # Unmounted here already: what is on the mount point now is not ours.
        pyfuse3.close(unmount=not gone)
    # Unmounted: end the session cleanly before the channel closes.
    with trio.move_on_after(SHUTDOWN_GRACE):
        await operations.clunk_all()
        await client.quiesce()
    return None


async def _notify(operations: Operations, scope: trio.CancelScope) -> None:
    with scope:
        await operations.watch_changes()


def serve(config: MountConfig, channel: Channel, ready: Callable[[], None]) -> None:
    """Mount and serve until unmounted; MountError if the mount could not be made."""
    unresponsive = False
    try:
        # Nursery errors always as ExceptionGroups: trio >= 0.25's default, which
        # Debian 12's trio 0.22 (default False) would otherwise collapse.
        unresponsive = trio.run(_serve, config, channel, ready, strict_exception_groups=True)
    finally:
        # A server that stopped answering will not notice EOF either.
        channel.close_process(0.0 if unresponsive else EXEC_EXIT_GRACE)


def _check_mountpoint(path: str) -> None:
    if not os.path.isdir(path):
        raise MountError(f"{path}: not a directory")
    if os.path.ismount(path):
        raise MountError(f"{path}: already a mount point")


def _daemon(args: argparse.Namespace, config: MountConfig) -> int:
    """Fork; the parent returns 0 once the child reports the mount live."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as report_reader:
            message = report_reader.read().decode(errors="replace").strip()
        if message == "ok":
            return 0
        os.waitpid(pid, 0)
        print(f"qsf-fuse: {message or 'the mount process died before the mount was live'}",
              file=sys.stderr)
        return 1
    os.close(read_end)
    status = 1
    try:
        os.setsid()
        _detach_stdio(args.log_file)
        with os.fdopen(write_end, "wb", buffering=0) as report:

            def ready() -> None:
                report.write(b"ok\n")
                report.close()

            try:
                channel = open_channel(args)
                serve(config, channel, ready)
                status = 0
            except (MountError, UsageError) as error:
                if not report.closed:
                    report.write(f"{error}\n".encode())
                log.error("%s", error)
            except BaseException as error:
                if not report.closed:
                    report.write(f"failed: {error!r}\n".encode())
                log.exception("qsf-fuse failed")
    finally:
        os._exit(status)


def _detach_stdio(log_file: str | None) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    out = null
    if log_file is not None:
        out = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)


def main(argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="qsf-fuse[%(process)d]: %(levelname)s %(name)s: %(message)s",
    )
    if (args.exec_command is None) == (args.rfd is None and args.wfd is None):
        parser.error("give either --rfd and --wfd, or --exec")
    if args.exec_command is None and (args.rfd is None or args.wfd is None):
        parser.error("--rfd and --wfd go together")
    try:
        config = parse_options(args.options, os.path.abspath(args.mountpoint))
    except UsageError as error:
        parser.error(str(error))
    try:
        _check_mountpoint(config.mountpoint)
    except MountError as error:
        print(f"qsf-fuse: {error}", file=sys.stderr)
        return 1
    if not args.foreground:
        return _daemon(args, config)
    try:
        channel = open_channel(args)
        serve(config, channel, lambda: None)
    except UsageError as error:
        parser.error(str(error))
    except MountError as error:
        print(f"qsf-fuse: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
