"""The shares recorded for start-up: $XDG_CONFIG_HOME/qsf/shares.json.

    {
      "version": 1,
      "shares": [
        {"server": "work", "folder": "/home/user/Shared", "mountpoint": "/home/user/work",
         "backend": "auto", "read_only": false, "options": ""}
      ]
    }

Validated on every read: a file that is not exactly this raises StoreError and is
never rewritten (the user fixes or removes it). Changes happen under an exclusive
lock on the directory and replace the file atomically (temp file, fsync, rename).
Paths that are not UTF-8 are kept with JSON's \\udcXX escapes (surrogateescape).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Final

from qsf_mount.request import MountRequest, build

VERSION: Final = 1
FILE_NAME: Final = "shares.json"
MAX_SIZE: Final = 1 << 20
MAX_SHARES: Final = 1000
FIELDS: Final = {"server": str, "folder": str, "mountpoint": str, "backend": str,
                 "read_only": bool, "options": str}


class StoreError(Exception):
    """The recorded shares cannot be read: the message names the file and the fault."""


def store_path(environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CONFIG_HOME/qsf/shares.json ($HOME/.config when unset or relative)."""
    config = environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(config):
        config = os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(config) / "qsf" / FILE_NAME


def to_json(request: MountRequest) -> dict[str, object]:
    return {"server": request.server, "folder": os.fsdecode(request.folder),
            "mountpoint": request.mountpoint, "backend": request.backend,
            "read_only": request.read_only, "options": request.options}


def parse(text: str) -> list[MountRequest]:
    """The shares of a store's text; ValueError says what is wrong."""
    document = json.loads(text)
    if not isinstance(document, dict) or set(document) != {"version", "shares"}:
        raise ValueError('expected an object with "version" and "shares"')
    version = document["version"]
    if version != VERSION:
        raise ValueError(f"unknown format version {version!r} (this qsf reads {VERSION})")
    entries = document["shares"]
    if not isinstance(entries, list) or len(entries) > MAX_SHARES:
        raise ValueError(f'"shares" must be a list of at most {MAX_SHARES} entries')
    shares: list[MountRequest] = []
    for number, entry in enumerate(entries, 1):
        try:
            shares.append(_entry(entry))
        except ValueError as error:
            raise ValueError(f"share {number}: {error}") from None
        if entry["mountpoint"] != shares[-1].mountpoint:
            raise ValueError(f"share {number}: mountpoint must be an absolute, normalised path")
        if shares[-1].mountpoint in (share.mountpoint for share in shares[:-1]):
            raise ValueError(f"share {number}: {shares[-1].mountpoint} is recorded twice")
    return shares


def _entry(entry: object) -> MountRequest:
    if not isinstance(entry, dict) or set(entry) != set(FIELDS):
        raise ValueError(f"expected an object with {', '.join(FIELDS)}")
    for name, kind in FIELDS.items():
        if type(entry[name]) is not kind:
            raise ValueError(f"{name} must be a {kind.__name__}")
    return build(server=entry["server"], folder=entry["folder"], mountpoint=entry["mountpoint"],
                 backend=entry["backend"], read_only=entry["read_only"],
                 options=entry["options"])


def dump(shares: list[MountRequest]) -> str:
    document = {"version": VERSION, "shares": [to_json(share) for share in shares]}
    return json.dumps(document, indent=2) + "\n"


def load(path: Path) -> list[MountRequest]:
    """The recorded shares ([] when the file does not exist); StoreError when broken."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SIZE + 1)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise StoreError(f"{path}: {error.strerror}") from None
    if len(data) > MAX_SIZE:
        raise StoreError(f"{path}: larger than {MAX_SIZE} bytes")
    try:
        return parse(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise StoreError(f"{path}: {error}; fix or remove the file") from None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update(path: Path, change: Callable[[list[MountRequest]], list[MountRequest]]) -> None:
    """Replace the shares with change(shares), under the lock; StoreError when broken."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(path.parent):
        shares = load(path)
        new = change(list(shares))
        if new == shares and path.exists():
            return
        _write(path, dump(new))


def _write(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with open(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
