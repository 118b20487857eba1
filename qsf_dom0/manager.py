"""The folder share manager's logic, without widgets (the window is manager_window).

It keeps the rows it shows and the store generation they were read at. Every
change is made against that generation: if anything (the dialog, a share, the
CLI, another manager) wrote the store meanwhile, nothing is saved, the rows are
reloaded and `message` says so. `poll` notices a store changed underneath by
the file's identity (inode, size, mtime) and reloads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from qsf_dom0 import policy, wire
from qsf_dom0.admin import Admin, Refused, Row, Stale, folder_argument, rows
from qsf_dom0.store import StoreError

STALE_MESSAGE: Final = (
    "The decisions changed while this window showed them (a dialog, a share, "
    "qvm-folder-share or another manager): nothing was saved. The list is reloaded; "
    "check it and try again."
)
VERDICTS: Final = ("allow", "deny")  # what may be added ahead of time


@dataclass(frozen=True, slots=True)
class Shown:
    """One row's texts for the list."""

    id: str
    client: str
    server: str
    folder: str
    decision: str
    mode: str
    decided: str
    last_used: str
    pending: bool


def decision_text(row: Row) -> str:
    if row.verdict == "allow":
        return "allow once (pending)" if row.pending else "allow always"
    return "block (everything)" if row.verdict == "block" else "deny"


def shown(row: Row, format_time: Callable[[float | None], str]) -> Shown:
    return Shown(
        id=row.id,
        client=row.client,
        server=row.server,
        folder=row.folder_text,
        decision=decision_text(row),
        mode=("read-only" if row.mode == "ro" else "read-write") if row.verdict == "allow" else "",
        decided=format_time(row.decided),
        last_used=format_time(row.last_used),
        pending=row.pending,
    )


def revocable(row: Row) -> bool:
    """A pending one-time grant is shown, not edited: it is used or gone within a minute."""
    return not row.pending


def mode_editable(row: Row) -> bool:
    return not row.pending and row.verdict == "allow"


class ManagerModel:
    """What the manager window shows and does; `message` is the last outcome to show."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.rows: list[Row] = []
        self.generation = -1
        self.message: str | None = None
        self._seen: tuple[int, int, int] | None = None

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.admin.config.store_path)
        except OSError:
            return None
        return info.st_ino, info.st_size, info.st_mtime_ns

    def reload(self) -> bool:
        """Read the store again; False (and `message`) when it cannot be read."""
        seen = self._identity()
        try:
            snapshot = self.admin.snapshot()
        except (StoreError, OSError) as error:
            self.message = f"The decisions cannot be read: {error}"
            return False
        self._seen = seen
        self.rows = rows(snapshot.decisions)
        self.generation = snapshot.generation
        return True

    def poll(self) -> bool:
        """Reload if the store file changed since the last read, or a shown one-time
        grant expired (that needs no write); whether it reloaded."""
        now = self.admin.clock()
        expired = any(r.pending and now > r.decided + self.admin.config.once_ttl for r in self.rows)
        if not expired and self._identity() == self._seen:
            return False
        return self.reload()

    def row(self, fingerprint: str) -> Row | None:
        return next((r for r in self.rows if r.id == fingerprint), None)

    def _apply(self, change: Callable[[int], object], done: str) -> bool:
        """Run a change against the shown generation; reload afterwards in every case."""
        try:
            change(self.generation)
        except Stale:
            self.message = STALE_MESSAGE
            self.reload()
            return False
        except (Refused, policy.PolicyError, StoreError) as error:
            self.message = f"Not saved: {error}"
            self.reload()
            return False
        except OSError as error:
            self.message = f"Not saved: {error.filename}: {error.strerror}"
            return False
        self.message = done
        self.reload()
        return True

    def revoke(self, fingerprint: str) -> bool:
        row = self.row(fingerprint)
        if row is None or not revocable(row):
            self.message = "A pending one-time grant cannot be revoked here."
            return False
        return self._apply(
            lambda generation: self.admin.revoke([fingerprint], generation),
            f"Revoked: {row.client} -> {row.server} {decision_text(row)} {row.folder_text}",
        )

    def set_mode(self, fingerprint: str, mode: str) -> bool:
        row = self.row(fingerprint)
        if row is None or not mode_editable(row):
            self.message = "Only a remembered grant has a mode to edit."
            return False
        access = "read-only" if mode == "ro" else "read-write"
        return self._apply(
            lambda generation: self.admin.set_mode(fingerprint, mode, generation),
            f"{row.client} -> {row.server} {row.folder_text} is now {access}",
        )

    def add(self, verdict: str, client: str, server: str, folder: str, read_only: bool) -> bool:
        """Add an Always grant or a deny ahead of time, from the form's texts."""
        try:
            client_name = wire.qube_name(client.strip())
            server_name = wire.qube_name(server.strip())
        except wire.InvalidInput:
            self.message = "Not saved: client and server must be qube names."
            return False
        try:
            path = folder_argument(folder.strip())
        except wire.InvalidInput as error:
            self.message = f"Not saved: the folder must be an absolute normalised path ({error})."
            return False
        if verdict not in VERDICTS:
            self.message = "Not saved: choose allow or deny."
            return False
        if verdict == "allow":
            mode = "ro" if read_only else "rw"
            return self._apply(
                lambda generation: self.admin.allow(
                    client_name, server_name, path, mode, expected_generation=generation
                ),
                f"Added: {client_name} may mount {folder.strip()} of {server_name}",
            )
        return self._apply(
            lambda generation: self.admin.deny(client_name, server_name, path, generation),
            f"Added: {client_name} is refused {folder.strip()} of {server_name}",
        )
