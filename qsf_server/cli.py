"""qsf-server: serve a directory as 9P2000.L on stdin/stdout until EOF."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys

import trio

from qsf_p9 import constants as c

from .connection import Connection, Ending
from .fs import Export
from .session import DEFAULT_MAX_FIDS

parser = argparse.ArgumentParser(
    prog="qsf-server",
    description="Serve DIR as 9P2000.L on stdin/stdout until EOF, confined to DIR.",
)
parser.add_argument("--read-only", action="store_true",
                    help="refuse every change and every open for writing (EROFS)")
parser.add_argument("--msize", type=int, default=c.MAX_MSIZE,
                    help=f"largest message size offered ({c.MIN_MSIZE}..{c.MAX_MSIZE}, "
                         f"default {c.MAX_MSIZE})")
parser.add_argument("directory", metavar="DIR", help="the directory to serve")

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


def main(args: list[str] | None = None) -> int:
    options = parser.parse_args(args)
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
    try:
        # Nursery errors always as ExceptionGroups: trio >= 0.25's default, which
        # Debian 12's trio 0.22 (default False) would otherwise collapse.
        ending = trio.run(_serve, export, read_fd, write_fd, options.read_only,
                          options.msize, max_fids, strict_exception_groups=True)
    except KeyboardInterrupt:
        return 130
    finally:
        export.close()
    if ending is Ending.EOF:
        return 0
    print(f"qsf-server: connection closed: {ending.value}", file=sys.stderr)
    return 1
