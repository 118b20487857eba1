"""The live exports of this user: one file each under $XDG_RUNTIME_DIR/qsf/exports/.

A qsf-server that serves a folder to a client qube records itself in
`<pid>.json` (pid, the process's start time, client, folder, mode, since) and
removes the file when it ends. A file whose pid is gone, or now belongs to
another process (start time differs), is stale: listings ignore it and remove
it. The runtime directory is the user's own (mode 0700, gone at logout or
shutdown), so only this user's processes can write records there.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

log = logging.getLogger("qsf_server.exports")

MAX_RECORD: Final = 16 * 1024
_RECORD_NAME: Final = re.compile(r"\A[0-9]{1,10}\.json\Z")
_QUBE_NAME: Final = re.compile(r"\A[a-zA-Z][a-zA-Z0-9_-]{0,30}\Z")


@dataclass(frozen=True, slots=True)
class LiveExport:
    pid: int
    started: int  # the process's start time in clock ticks since boot (/proc/PID/stat)
    client: str
    folder: bytes
    mode: str  # ro | rw
    since: float


def runtime_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """$XDG_RUNTIME_DIR, else /run/user/UID when it exists (qrexec may not set it)."""
    given = environ.get("XDG_RUNTIME_DIR")
    if given and os.path.isabs(given):
        return Path(given)
    fallback = Path(f"/run/user/{os.getuid()}")
    return fallback if fallback.is_dir() else None


def exports_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    base = runtime_dir(environ)
    return None if base is None else base / "qsf" / "exports"


def process_start(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time), None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def encode(record: LiveExport) -> bytes:
    return json.dumps(
        {
            "pid": record.pid,
            "started": record.started,
            "client": record.client,
            "folder": base64.b64encode(record.folder).decode("ascii"),
            "mode": record.mode,
            "since": record.since,
        }
    ).encode("ascii")


def decode(content: bytes) -> LiveExport | None:
    """A record, or None for anything malformed (the directory is only ours, still)."""
    try:
        entry: Any = json.loads(content)
        record = LiveExport(
            pid=entry["pid"],
            started=entry["started"],
            client=entry["client"],
            folder=base64.b64decode(entry["folder"], validate=True),
            mode=entry["mode"],
            since=entry["since"],
        )
    except (ValueError, TypeError, KeyError, binascii.Error):
        return None
    valid = (
        isinstance(record.pid, int)
        and isinstance(record.started, int)
        and isinstance(record.client, str)
        and _QUBE_NAME.match(record.client) is not None
        and record.mode in ("ro", "rw")
        and isinstance(record.since, (int, float))
        and record.folder.startswith(b"/")
    )
    return record if valid else None


@contextmanager
def registered(
    client: str, folder: bytes, mode: str, environ: Mapping[str, str] = os.environ
) -> Iterator[Path | None]:
    """Record this process's export while the block runs; yields the file (None: not kept).

    Failing to record is logged, never fatal: the share goes on.
    """
    path = _write_record(client, folder, mode, environ)
    try:
        yield path
    finally:
        if path is not None:
            with suppress(OSError):
                path.unlink()


def _write_record(
    client: str, folder: bytes, mode: str, environ: Mapping[str, str]
) -> Path | None:
    directory = exports_dir(environ)
    started = process_start(os.getpid())
    if directory is None or started is None:
        log.warning("no runtime directory: this export is not listed")
        return None
    record = LiveExport(os.getpid(), started, client, folder, mode, time.time())
    path = directory / f"{record.pid}.json"
    temp = directory / f".{record.pid}.json.tmp"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(encode(record))
        os.rename(temp, path)
    except OSError as error:
        log.warning("cannot record this export in %s: %s", directory, error.strerror)
        with suppress(OSError):
            temp.unlink()
        return None
    return path


def live_exports(environ: Mapping[str, str] = os.environ) -> list[LiveExport]:
    """This user's live exports, oldest first; stale records are removed on the way."""
    directory = exports_dir(environ)
    if directory is None:
        return []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in names:
        if not _RECORD_NAME.match(name):
            continue
        path = directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as file:
                record = decode(file.read(MAX_RECORD + 1))
        except OSError:
            continue
        if (
            record is None
            or name != f"{record.pid}.json"
            or process_start(record.pid) != record.started
        ):
            with suppress(OSError):
                path.unlink()  # its server is gone (or the file is not one of ours)
            continue
        found.append(record)
    return sorted(found, key=lambda r: (r.since, r.pid))
