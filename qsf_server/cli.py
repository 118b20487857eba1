"""qsf-server: serve a directory as 9P2000.L on stdin/stdout until EOF."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import re
import resource
import sys
import threading

import trio

from qsf_p9 import constants as c

from . import exports, notify
from .connection import Connection, Ending
from .fs import Export
from .session import DEFAULT_MAX_FIDS

QUBE_NAME_RE = re.compile(r"\A[a-zA-Z][a-zA-Z0-9_-]{0,30}\Z")
RELEASE_NOTIFY_WAIT = 1.0  # seconds the exit waits for the release notification at most

parser = argparse.ArgumentParser(
    prog="qsf-server",
    description="Serve DIR as 9P2000.L on stdin/stdout until EOF, confined to DIR. "
    "qsf.ConnectToFolder runs it with --client once dom0 has authorized the share.",
    epilog="With --client QUBE, the export is listed (qsf-server --list-exports: one file "
    "per live export under $XDG_RUNTIME_DIR/qsf/exports/, removed when it ends) and a "
    "desktop notification says when the folder starts being served and when it is released "
    "(org.freedesktop.Notifications on the session bus, through gdbus; without a session "
    "bus only a log line). Exit status: 0 at EOF, 1 on a failure, 2 usage error.",
)
parser.add_argument("--read-only", action="store_true",
                    help="refuse every change and every open for writing (EROFS)")
parser.add_argument("--msize", type=int, default=c.MAX_MSIZE,
                    help=f"largest message size offered ({c.MIN_MSIZE}..{c.MAX_MSIZE}, "
                         f"default {c.MAX_MSIZE})")
parser.add_argument("--client", metavar="QUBE",
                    help="the client qube served: list this export and notify the user")
parser.add_argument("--list-exports", action="store_true",
                    help="list this user's live exports (pid, client, mode, since, folder) "
                         "and exit")
parser.add_argument("directory", metavar="DIR", nargs="?", help="the directory to serve")

# Descriptors kept back for the process itself (stdio, the root, workers).
_RESERVED_FDS = 64


def _fid_limit() -> int:
    """As many fids as descriptors allow: each may hold an O_PATH and an open fd."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 2 * DEFAULT_MAX_FIDS + _RESERVED_FDS
        new_soft = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        if new_soft > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
                soft = new_soft
            except (ValueError, OSError):
                pass
    return max(16, min(DEFAULT_MAX_FIDS, (soft - _RESERVED_FDS) // 2))


def _take_stdio() -> tuple[int, int]:
    """Own duplicates of stdin/stdout; fds 0 and 1 then point at /dev/null so that
    nothing else in the process can write into the 9P stream."""
    read_fd = os.dup(0)
    write_fd = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    return read_fd, write_fd


async def _serve(export: Export, read_fd: int, write_fd: int, read_only: bool, msize: int,
                 max_fids: int) -> Ending:
    receive = trio.lowlevel.FdStream(read_fd)
    send = trio.lowlevel.FdStream(write_fd)
    try:
        connection = Connection(receive, send, export, read_only=read_only, msize=msize,
                                max_fids=max_fids)
        return await connection.serve()
    finally:
        with trio.CancelScope(shield=True):
            await send.aclose()
            await receive.aclose()


def list_exports() -> int:
    """`--list-exports`: a table of this user's live exports."""
    rows = [("PID", "CLIENT", "MODE", "SINCE", "FOLDER")]
    for record in exports.live_exports():
        since = datetime.datetime.fromtimestamp(record.since).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((str(record.pid), record.client, record.mode, since,
                     notify.display_folder(record.folder)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[4])
    return 0


def _announce(client: str | None, folder: bytes, mode: str,
              event: str) -> threading.Thread | None:
    if client is None:
        return None
    return notify.send(*notify.messages(event, client, folder, mode))


def main(args: list[str] | None = None) -> int:
    options = parser.parse_args(args)
    if options.list_exports:
        if options.directory is not None or options.client is not None:
            parser.error("--list-exports takes no DIR and no --client")
        return list_exports()
    if options.directory is None:
        parser.error("DIR is required")
    if options.client is not None and not QUBE_NAME_RE.match(options.client):
        parser.error("--client must be a qube name")
    if not c.MIN_MSIZE <= options.msize <= c.MAX_MSIZE:
        parser.error(f"--msize must be within {c.MIN_MSIZE}..{c.MAX_MSIZE}")
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="qsf-server: %(message)s")
    try:
        export = Export(options.directory)
    except OSError as failure:
        print(f"qsf-server: cannot serve {options.directory}: {failure.strerror}",
              file=sys.stderr)
        return 1
    # Modes arrive with the client's umask already applied.
    os.umask(0)
    max_fids = _fid_limit()
    read_fd, write_fd = _take_stdio()
    folder = os.fsencode(os.path.abspath(options.directory))
    mode = "ro" if options.read_only else "rw"
    record = (exports.registered(options.client, folder, mode) if options.client
              else contextlib.nullcontext())
    serving = None
    try:
        with record:
            serving = _announce(options.client, folder, mode, "serving")
            ending = trio.run(_serve, export, read_fd, write_fd, options.read_only,
                              options.msize, max_fids,
                              # Nursery errors always as ExceptionGroups: trio >= 0.25's
                              # default, which Debian 12's trio 0.22 would collapse.
                              strict_exception_groups=True)
    except KeyboardInterrupt:
        return 130
    finally:
        export.close()
        if serving is not None:  # so that "released" does not overtake it
            serving.join(RELEASE_NOTIFY_WAIT)
        released = _announce(options.client, folder, mode, "released")
        if released is not None:
            released.join(RELEASE_NOTIFY_WAIT)
    if ending is Ending.EOF:
        return 0
    print(f"qsf-server: connection closed: {ending.value}", file=sys.stderr)
    return 1
