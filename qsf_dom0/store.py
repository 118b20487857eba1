"""The decision store: a versioned JSON file, changed under an exclusive lock.

Every change takes flock(LOCK_EX) on the store's directory, reads the file,
and writes the whole new content to a dot-prefixed temporary file that is
fsync'ed and renamed over the old one: a reader sees the old or the new file,
never half of one. Upstream's policy.db is imported (fingerprints kept) when
our store does not exist yet.

The file's `generation` grows by one at every write: a reader that kept a
snapshot (the folder share manager) knows whether the store changed since.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from qsf_dom0.decisions import Decision, Kind, policy_refusal
from qsf_dom0.wire import InvalidInput, fingerprint, folder_path, is_disposable, qube_name

FORMAT: Final = "qsf-decisions"
VERSION: Final = 2  # 2 added "generation" and each decision's "last_used"
READABLE_VERSIONS: Final = (1, 2)  # a version 1 file is read as is, written as 2
MAX_STORE_BYTES: Final = 16 * 1024 * 1024
STORE_MODE: Final = 0o640

_UPSTREAM_KINDS: Final = {"ALLOW_ALWAYS": Kind.ALWAYS, "DENY_ALWAYS": Kind.DENY}


class StoreError(Exception):
    """The store is unreadable or malformed: refuse to decide rather than guess."""


@dataclass
class Transaction:
    """The decisions read under the lock; set `decisions` to store new ones.

    `generation` is the generation of the file as read (0 when there is none).
    """

    decisions: list[Decision]
    dirty: bool = field(default=False)
    generation: int = field(default=0)

    def replace(self, decisions: list[Decision]) -> None:
        if decisions != self.decisions:
            self.decisions = decisions
            self.dirty = True


@contextmanager
def locked_directory(directory: Path) -> Iterator[int]:
    """Hold flock(LOCK_EX) on a directory (as Qubes' policy admin does)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def atomic_write(
    directory_fd: int,
    name: str,
    content: bytes,
    mode: int,
    group: int | None = None,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace `name` in the directory by `content`: dot-temp, fsync, chmod, rename.

    With `group`, the file is chown'ed root:group before it takes its name; with
    `owner`, (uid, gid).
    """
    temp = f".{name}.{os.getpid()}.tmp"
    with suppress(FileNotFoundError):
        os.unlink(temp, dir_fd=directory_fd)
    fd = os.open(
        temp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        mode,
        dir_fd=directory_fd,
    )
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        if owner is not None:
            os.fchown(fd, *owner)
        elif group is not None:
            os.fchown(fd, 0, group)
        os.fchmod(fd, mode)  # the umask must not narrow (or widen) it
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temp, dir_fd=directory_fd)
        raise
    os.close(fd)
    os.rename(temp, name, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
    os.fsync(directory_fd)


def encode(decisions: list[Decision], generation: int = 0) -> bytes:
    """The file content for a list of decisions."""
    entries = [
        {
            "fingerprint": d.fingerprint,
            "client": d.client,
            "server": d.server,
            "folder": base64.b64encode(d.folder).decode("ascii"),
            "kind": d.kind.value,
            "mode": d.mode,
            "created": d.created,
            "last_used": d.last_used,
        }
        for d in decisions
    ]
    document = {
        "format": FORMAT,
        "version": VERSION,
        "generation": generation,
        "decisions": entries,
    }
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode("ascii")


def decode(content: bytes) -> list[Decision]:
    """Decisions from file content; StoreError on anything unexpected."""
    return decode_document(content)[0]


def decode_document(content: bytes) -> tuple[list[Decision], int]:
    """(decisions, generation) from file content; StoreError on anything unexpected."""
    try:
        document = json.loads(content)
    except (ValueError, UnicodeDecodeError) as error:
        raise StoreError(f"decision store is not JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StoreError("decision store has no qsf-decisions format marker")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or (
        version not in READABLE_VERSIONS
    ):
        raise StoreError(f"decision store version {version!r} unsupported")
    generation = document.get("generation", 0) if version >= 2 else 0
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise StoreError("decision store generation is not a count")
    entries = document.get("decisions")
    if not isinstance(entries, list):
        raise StoreError("decision store has no decision list")
    decisions = [_decision(entry) for entry in entries]
    if len({d.fingerprint for d in decisions}) != len(decisions):
        raise StoreError("decision store repeats a fingerprint")
    return decisions, generation


def _decision(entry: Any) -> Decision:
    try:
        if not isinstance(entry, dict):
            raise InvalidInput("entry is not an object")
        created = _time(entry["created"], "created")
        last_used = entry.get("last_used")  # absent in version 1
        if last_used is not None:
            last_used = _time(last_used, "last_used")
        mode = entry["mode"]
        if mode not in ("ro", "rw"):
            raise InvalidInput("mode is not ro or rw")
        folder = base64.b64decode(_text(entry["folder"]), validate=True)
        return Decision(
            fingerprint=fingerprint(_text(entry["fingerprint"])),
            client=qube_name(_text(entry["client"])),
            server=qube_name(_text(entry["server"])),
            folder=folder_path(folder),
            kind=Kind(entry["kind"]),
            mode=mode,
            created=created,
            last_used=last_used,
        )
    except (KeyError, ValueError, InvalidInput, binascii.Error) as error:
        raise StoreError(f"malformed decision in store: {error}") from None


def _time(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidInput(f"{name} is not a number")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput("expected a string")
    return value


def import_upstream(content: bytes, now: float) -> tuple[list[Decision], int]:
    """Decisions from upstream's policy.db, and how many entries were skipped.

    One-time entries are not carried over (they never survive a restart);
    DENY_ALWAYS on "/" is upstream's block. Invalid entries are skipped.
    """
    try:
        document = json.loads(content)
    except (ValueError, UnicodeDecodeError) as error:
        raise StoreError(f"upstream policy.db is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise StoreError("upstream policy.db is not a JSON object")
    decisions: list[Decision] = []
    skipped = 0
    for untrusted_fingerprint, entry in document.items():
        try:
            decisions.append(_upstream_decision(untrusted_fingerprint, entry, now))
        except (InvalidInput, KeyError, TypeError):
            skipped += 1
    return decisions, skipped


def _upstream_decision(untrusted_fingerprint: str, entry: Any, now: float) -> Decision:
    if not isinstance(entry, dict):
        raise InvalidInput("entry is not an object")
    kind = _UPSTREAM_KINDS.get(entry["response"])
    if kind is None:
        raise InvalidInput("one-time or unknown response")
    raw_folder = _text(entry["folder"]).encode("utf-8", "surrogateescape")
    if len(raw_folder) > 1:
        raw_folder = raw_folder.rstrip(b"/") or b"/"
    folder = folder_path(raw_folder)
    if kind is Kind.DENY and folder == b"/":
        kind = Kind.BLOCK
    client = qube_name(_text(entry["source"]))
    server = qube_name(_text(entry["target"]))
    if policy_refusal(client, server) is not None:
        raise InvalidInput("dom0 or loopback entry")  # its policy line would be refused
    if kind is Kind.ALWAYS and is_disposable(client):
        raise InvalidInput("Always grant to a disposable qube")
    return Decision(
        fingerprint=fingerprint(untrusted_fingerprint.lower()),
        client=client,
        server=server,
        folder=folder,
        kind=kind,
        mode="rw",
        created=now,
    )


class Store:
    """The decision file at `path`; `upstream` is policy.db to import once."""

    def __init__(self, path: Path, upstream: Path | None = None) -> None:
        self.path = path
        self.upstream = upstream

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Lock, read, yield; write back if the transaction changed (and did not raise)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with locked_directory(self.path.parent) as directory_fd:
            transaction = self._read(directory_fd)
            yield transaction
            if transaction.dirty:
                content = encode(transaction.decisions, transaction.generation + 1)
                atomic_write(directory_fd, self.path.name, content, STORE_MODE,
                             owner=_directory_owner(directory_fd))

    def load(self) -> list[Decision]:
        """A consistent snapshot of the decisions (read under the lock)."""
        return self.snapshot()[0]

    def snapshot(self) -> tuple[list[Decision], int]:
        """The decisions and the store's generation, read together under the lock."""
        with self.transaction() as transaction:
            transaction.dirty = False  # a read never writes, even after an import
            return list(transaction.decisions), transaction.generation

    def _read(self, directory_fd: int) -> Transaction:
        content = _read_bounded(self.path.name, directory_fd)
        if content is not None:
            decisions, generation = decode_document(content)
            return Transaction(decisions, generation=generation)
        if self.upstream is not None:
            upstream = _read_bounded(str(self.upstream), None)
            if upstream is not None:
                decisions, _skipped = import_upstream(upstream, time.time())
                return Transaction(decisions, dirty=True)
        return Transaction([])


def _directory_owner(directory_fd: int) -> tuple[int, int] | None:
    """Root (qvm-folder-share, the manager) writes the store as its directory's owner,
    so that the services, run as dom0's user, still read and replace it."""
    if os.geteuid() != 0:
        return None
    info = os.fstat(directory_fd)
    return info.st_uid, info.st_gid


def _read_bounded(name: str, directory_fd: int | None) -> bytes | None:
    """The file's content (None when missing), refusing more than MAX_STORE_BYTES."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory_fd)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StoreError(f"cannot open {name}: {error.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        content = file.read(MAX_STORE_BYTES + 1)
    if len(content) > MAX_STORE_BYTES:
        raise StoreError(f"{name} is larger than {MAX_STORE_BYTES} bytes")
    return content
