"""Changing remembered decisions by hand: what qvm-folder-share and the manager share.

Every change is one store transaction, as the services make them: lock and read
the store, drop expired one-time grants, apply a pure change (the functions
below), bring both generated policy files in line, and only then write the
store. A refused change (`Refused`), a store changed since the caller's snapshot
(`Stale`) or a policy line failing validation (`policy.PolicyError`) writes
nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from qsf_dom0 import decisions, policy, store, wire
from qsf_dom0.config import Config
from qsf_dom0.decisions import Decision, Kind
from qsf_dom0.prompt import display_path
from qsf_dom0.services import new_fingerprint

Clock = Callable[[], float]
Change = Callable[[list[Decision], float], list[Decision]]

MIN_ID_PREFIX: Final = 6  # hex digits that may stand for a whole fingerprint
_VERDICTS: Final = {
    Kind.ONCE: "allow",
    Kind.ALWAYS: "allow",
    Kind.DENY: "deny",
    Kind.BLOCK: "block",
}


class Refused(Exception):
    """The change is not allowed; the message says why (nothing was written)."""


class Stale(Exception):
    """The store changed since the snapshot the change was made against."""


@dataclass(frozen=True, slots=True)
class Row:
    """One remembered decision as the CLI and the manager show it."""

    id: str
    client: str
    server: str
    folder: bytes
    verdict: str  # allow | deny | block
    mode: str  # ro | rw
    duration: str  # once | always
    decided: float
    last_used: float | None
    pending: bool  # a one-time grant not used yet: shown, never edited

    @property
    def folder_text(self) -> str:
        return display_path(self.folder)


def row(decision: Decision) -> Row:
    return Row(
        id=decision.fingerprint,
        client=decision.client,
        server=decision.server,
        folder=decision.folder,
        verdict=_VERDICTS[decision.kind],
        mode=decision.mode,
        duration="once" if decision.kind is Kind.ONCE else "always",
        decided=decision.created,
        last_used=decision.last_used,
        pending=decision.kind is Kind.ONCE,
    )


def rows(remembered: Iterable[Decision]) -> list[Row]:
    """Rows sorted by client, server, folder."""
    return sorted(
        (row(d) for d in remembered), key=lambda r: (r.client, r.server, r.folder, r.id)
    )


# Pure changes: (decisions, ...) -> new decisions, or Refused.


def check(new: Decision, current: Sequence[Decision]) -> None:
    """Refused unless `new` may be stored next to `current` (the services' own rules)."""
    if decisions.ADMIN_QUBE in (new.client, new.server):
        raise Refused("dom0 never shares or mounts folders")
    if new.client == new.server:
        raise Refused(f"{new.client} cannot share a folder with itself")
    if new.kind is Kind.ALWAYS and wire.is_disposable(new.client):
        raise Refused(f"{new.client} is disposable: it never gets Always grants (use --once)")
    if new.kind in (Kind.ONCE, Kind.ALWAYS) and decisions.is_blocked(
        new.client, new.server, current
    ):
        raise Refused(f"{new.client} is blocked from {new.server}: revoke the block first")


def add(current: Sequence[Decision], new: Decision) -> list[Decision]:
    """`current` with `new`, replacing the remembered decision for the same folder."""
    check(new, current)
    return decisions.remember(current, new)


def resolve_ids(current: Sequence[Decision], untrusted_ids: Iterable[str]) -> list[str]:
    """Full fingerprints for ids given whole or as a unique prefix of 6+ hex digits."""
    found: list[str] = []
    for given in untrusted_ids:
        text = given.lower()
        if len(text) < MIN_ID_PREFIX or not all(c in "0123456789abcdef" for c in text):
            raise Refused(f"{given!r} is not a decision id (at least {MIN_ID_PREFIX} hex digits)")
        matches = [d.fingerprint for d in current if d.fingerprint.startswith(text)]
        if not matches:
            raise Refused(f"no decision has id {given}")
        if len(matches) > 1:
            raise Refused(f"id {given} is ambiguous: give more digits")
        if matches[0] not in found:
            found.append(matches[0])
    return found


def revoke(current: Sequence[Decision], ids: Iterable[str]) -> list[Decision]:
    """`current` without the decisions of these (full) ids."""
    gone = set(ids)
    return [d for d in current if d.fingerprint not in gone]


def set_mode(current: Sequence[Decision], fingerprint: str, mode: str) -> list[Decision]:
    """A grant's mode changed; a pending one-time grant or a deny cannot be edited."""
    target = next((d for d in current if d.fingerprint == fingerprint), None)
    if target is None:
        raise Refused("the decision is gone (revoked meanwhile)")
    if target.kind is Kind.ONCE:
        raise Refused("a pending one-time grant cannot be edited")
    if target.kind is not Kind.ALWAYS:
        raise Refused("only grants have a mode")
    if mode not in wire.MODES:
        raise Refused("mode must be ro or rw")
    return [replace(d, mode=mode) if d is target else d for d in current]


def folder_argument(text: str) -> bytes:
    """A folder typed by the user: trailing slashes dropped, then validated."""
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) > 1:
        raw = raw.rstrip(b"/") or b"/"
    return wire.folder_path(raw)


@dataclass(frozen=True, slots=True)
class Snapshot:
    decisions: list[Decision]
    generation: int


class Admin:
    """The decision store of a dom0 `Config`, changed as the services change it."""

    def __init__(
        self,
        config: Config,
        clock: Clock = time.time,
        make_fingerprint: Callable[[], str] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.make_fingerprint = make_fingerprint or new_fingerprint
        self.store = store.Store(config.store_path, config.upstream_db)

    def snapshot(self) -> Snapshot:
        """The live decisions and the generation they were read at (nothing written)."""
        remembered, generation = self.store.snapshot()
        now = self.clock()
        return Snapshot(decisions.prune(remembered, now, self.config.once_ttl), generation)

    def change(self, edit: Change, expected_generation: int | None = None) -> Snapshot:
        """Apply `edit` in one transaction; Stale if the generation is not the expected one."""
        with self.store.transaction() as transaction:
            if expected_generation is not None and transaction.generation != expected_generation:
                raise Stale("the decisions changed since they were shown")
            now = self.clock()
            live = decisions.prune(transaction.decisions, now, self.config.once_ttl)
            changed = edit(live, now)
            policy.sync(changed, self.config.grants_dir, self.config.once_dir, now)
            transaction.replace(changed)
            generation = transaction.generation + (1 if transaction.dirty else 0)
        return Snapshot(changed, generation)

    def _new(self, client: str, server: str, folder: bytes, kind: Kind, mode: str) -> Change:
        fingerprint = self.make_fingerprint()
        return lambda current, now: add(
            current, Decision(fingerprint, client, server, folder, kind, mode, now)
        )

    def allow(
        self,
        client: str,
        server: str,
        folder: bytes,
        mode: str,
        once: bool = False,
        expected_generation: int | None = None,
    ) -> Snapshot:
        kind = Kind.ONCE if once else Kind.ALWAYS
        return self.change(self._new(client, server, folder, kind, mode), expected_generation)

    def deny(
        self, client: str, server: str, folder: bytes, expected_generation: int | None = None
    ) -> Snapshot:
        return self.change(self._new(client, server, folder, Kind.DENY, "rw"), expected_generation)

    def block(self, client: str, server: str, expected_generation: int | None = None) -> Snapshot:
        return self.change(self._new(client, server, b"/", Kind.BLOCK, "rw"), expected_generation)

    def revoke(self, ids: Sequence[str], expected_generation: int | None = None) -> list[Decision]:
        """Remove decisions by id (or unique prefix); returns the removed ones."""
        removed: list[Decision] = []

        def edit(current: list[Decision], _now: float) -> list[Decision]:
            full = set(resolve_ids(current, ids))
            removed.extend(d for d in current if d.fingerprint in full)
            return revoke(current, full)

        self.change(edit, expected_generation)
        return removed

    def revoke_where(
        self, client: str | None, server: str | None, expected_generation: int | None = None
    ) -> list[Decision]:
        """Remove every decision from `client` and/or to `server`."""
        removed: list[Decision] = []

        def edit(current: list[Decision], _now: float) -> list[Decision]:
            removed.extend(
                d
                for d in current
                if (client is None or d.client == client) and (server is None or d.server == server)
            )
            return revoke(current, {d.fingerprint for d in removed})

        self.change(edit, expected_generation)
        return removed

    def set_mode(
        self, fingerprint: str, mode: str, expected_generation: int | None = None
    ) -> Snapshot:
        return self.change(
            lambda current, _now: set_mode(current, fingerprint, mode), expected_generation
        )

    def import_upstream(self, path: Path) -> tuple[int, int]:
        """Add upstream's remembered decisions; (added, skipped). Known ids are skipped.

        A store that does not exist yet imports policy.db by itself when first read:
        those entries count as added here too.
        """
        content = _read(path)
        prior = {d.fingerprint for d in self.store.load()} if self.store.path.exists() else set()
        counts = [0, 0]

        def edit(current: list[Decision], now: float) -> list[Decision]:
            imported, skipped = store.import_upstream(content, now)
            known = {d.fingerprint for d in current}
            merged = list(current)
            added = 0
            for new in imported:
                if new.fingerprint in prior:
                    skipped += 1
                elif new.fingerprint in known:
                    added += 1  # imported by this very transaction's first read
                else:
                    try:
                        merged = add(merged, new)
                    except Refused:
                        skipped += 1
                        continue
                    known.add(new.fingerprint)
                    added += 1
            counts[:] = [added, skipped]
            return merged

        self.change(edit)
        return counts[0], counts[1]


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            content = file.read(store.MAX_STORE_BYTES + 1)
    except OSError as error:
        raise Refused(f"cannot read {path}: {error.strerror}") from None
    if len(content) > store.MAX_STORE_BYTES:
        raise Refused(f"{path} is larger than {store.MAX_STORE_BYTES} bytes")
    return content

