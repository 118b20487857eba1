"""Pure decision logic: (request, stored decisions, now) -> outcome.

Nothing here reads a file, a clock or a random source: effects live in
`qsf_dom0.services`, which feeds these functions and carries out their results.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from qsf_dom0.wire import is_disposable, is_within

ADMIN_QUBE: Final = "dom0"
ONCE_TTL: Final = 60.0  # seconds an unused one-time grant stays valid


class Kind(enum.Enum):
    """What a stored decision says."""

    ONCE = "once"  # allow one connection, within ONCE_TTL
    ALWAYS = "always"  # allow until revoked
    DENY = "deny"  # remembered deny for this folder (and below)
    BLOCK = "block"  # deny everything from this client to this server


class Choice(enum.Enum):
    """What the user answered to a prompt."""

    ALLOW_ONCE = "allow-once"
    ALLOW_ALWAYS = "allow-always"
    DENY_ONCE = "deny-once"  # deny this request, remember nothing
    DENY_ALWAYS = "deny-always"
    BLOCK = "block"


@dataclass(frozen=True, slots=True)
class Decision:
    """One stored decision. `folder` is a validated absolute path; `mode` ro or rw.

    `last_used` is when the decision last decided something (a grant used by a
    server's query, a deny or block applied to a request); None until then.
    """

    fingerprint: str
    client: str
    server: str
    folder: bytes
    kind: Kind
    mode: str
    created: float
    last_used: float | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """A validated authorization request from `client`."""

    client: str
    server: str
    folder: bytes
    mode: str


@dataclass(frozen=True, slots=True)
class Answer:
    """A prompt's answer; `mode` may downgrade an rw request to ro, never the reverse."""

    choice: Choice
    mode: str


# Outcomes of evaluate()


@dataclass(frozen=True, slots=True)
class Allow:
    fingerprint: str
    mode: str


@dataclass(frozen=True, slots=True)
class Deny:
    reason: str  # user | block | policy


@dataclass(frozen=True, slots=True)
class Ask:
    """Prompt the user; the choices the dialog may offer."""

    choices: tuple[Choice, ...]


Outcome = Allow | Deny | Ask


def is_live(decision: Decision, now: float, ttl: float = ONCE_TTL) -> bool:
    """Whether a decision still counts: one-time grants die `ttl` s after creation."""
    if decision.kind is Kind.ONCE:
        return decision.created <= now <= decision.created + ttl
    return True


def prune(decisions: Iterable[Decision], now: float, ttl: float = ONCE_TTL) -> list[Decision]:
    """The decisions without expired one-time grants."""
    return [d for d in decisions if is_live(d, now, ttl)]


def policy_refusal(client: str, server: str) -> Deny | None:
    """dom0 never serves; a qube never mounts from itself."""
    if server == ADMIN_QUBE or client == ADMIN_QUBE:
        return Deny("policy")
    if client == server:
        return Deny("policy")
    return None


def is_blocked(client: str, server: str, decisions: Iterable[Decision]) -> bool:
    return blocking(client, server, decisions) is not None


def blocking(client: str, server: str, decisions: Iterable[Decision]) -> Decision | None:
    """The block decision from `client` to `server`, if any."""
    return next(
        (
            d
            for d in decisions
            if d.kind is Kind.BLOCK and d.client == client and d.server == server
        ),
        None,
    )


def most_specific(request: Request, decisions: Iterable[Decision]) -> Decision | None:
    """The remembered (Always/Deny) decision with the longest folder containing the request.

    For equal folders a Deny outranks an Always. Always grants never count for a
    disposable client.
    """
    best: Decision | None = None
    for decision in decisions:
        if decision.client != request.client or decision.server != request.server:
            continue
        if decision.kind is Kind.ALWAYS and is_disposable(request.client):
            continue
        if decision.kind not in (Kind.ALWAYS, Kind.DENY):
            continue
        if not is_within(request.folder, decision.folder):
            continue
        if best is None or _outranks(decision, best):
            best = decision
    return best


def _outranks(candidate: Decision, best: Decision) -> bool:
    if len(candidate.folder) != len(best.folder):
        return len(candidate.folder) > len(best.folder)
    return candidate.kind is Kind.DENY and best.kind is not Kind.DENY


def choices_for(request: Request) -> tuple[Choice, ...]:
    """What the dialog may offer: no Always for a disposable client."""
    if is_disposable(request.client):
        return (Choice.ALLOW_ONCE, Choice.DENY_ONCE, Choice.DENY_ALWAYS, Choice.BLOCK)
    return tuple(Choice)


def evaluate(request: Request, decisions: Sequence[Decision], now: float) -> Outcome:
    """Decide an authorization request from the stored decisions at time `now`."""
    refusal = policy_refusal(request.client, request.server)
    if refusal is not None:
        return refusal
    live = prune(decisions, now)
    if is_blocked(request.client, request.server, live):
        return Deny("block")
    remembered = most_specific(request, live)
    if remembered is not None:
        if remembered.kind is Kind.DENY:
            return Deny("user")
        # A ro request matches either grant (and mounts read-only); rw needs rw.
        if request.mode == "ro" or remembered.mode == "rw":
            return Allow(remembered.fingerprint, request.mode)
    return Ask(choices_for(request))


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a prompt's answer changes: the new decision list and the reply."""

    decisions: list[Decision]
    reply: Allow | Deny
    changed: bool = field(default=True)


def resolve(
    request: Request,
    answer: Answer,
    decisions: Sequence[Decision],
    now: float,
    new_fingerprint: str,
) -> Resolution:
    """Apply the user's answer. `new_fingerprint` is fresh randomness from the caller.

    The request is evaluated again first: a block or deny stored while the
    dialog was open still wins.
    """
    again = evaluate(request, decisions, now)
    if isinstance(again, Deny):
        return Resolution(list(decisions), again, changed=False)
    mode = "ro" if request.mode == "ro" or answer.mode == "ro" else "rw"
    choice = answer.choice
    if choice not in choices_for(request):
        # A dialog offering what it must not (Always to a disposable) counts as Once.
        choice = Choice.ALLOW_ONCE if choice is Choice.ALLOW_ALWAYS else Choice.DENY_ONCE
    if choice is Choice.DENY_ONCE:
        return Resolution(list(decisions), Deny("user"), changed=False)
    kind = {
        Choice.ALLOW_ONCE: Kind.ONCE,
        Choice.ALLOW_ALWAYS: Kind.ALWAYS,
        Choice.DENY_ALWAYS: Kind.DENY,
        Choice.BLOCK: Kind.BLOCK,
    }[choice]
    folder = b"/" if kind is Kind.BLOCK else request.folder
    new = Decision(new_fingerprint, request.client, request.server, folder, kind, mode, now)
    kept = remember(decisions, new)
    if kind is Kind.ONCE or kind is Kind.ALWAYS:
        reply: Allow | Deny = Allow(new_fingerprint, mode)
    elif kind is Kind.BLOCK:
        reply = Deny("block")
    else:
        reply = Deny("user")
    return Resolution(kept, reply)


def remember(decisions: Iterable[Decision], new: Decision) -> list[Decision]:
    """The decisions with `new` added, replacing the remembered one it supersedes."""
    return [*(d for d in decisions if not _replaced_by(d, new)), new]


def deciding(request: Request, decisions: Sequence[Decision], now: float) -> Decision | None:
    """The stored deny or block that `evaluate` refuses this request by, if any."""
    if policy_refusal(request.client, request.server) is not None:
        return None
    live = prune(decisions, now)
    block = blocking(request.client, request.server, live)
    if block is not None:
        return block
    remembered = most_specific(request, live)
    if remembered is not None and remembered.kind is Kind.DENY:
        return remembered
    return None


def used(decisions: Iterable[Decision], fingerprint: str, now: float) -> list[Decision]:
    """The decisions with the one of `fingerprint` marked as last used at `now`."""
    return [
        dataclasses.replace(d, last_used=now) if d.fingerprint == fingerprint else d
        for d in decisions
    ]


def _replaced_by(old: Decision, new: Decision) -> bool:
    """A remembered decision replaces the remembered one for the same folder."""
    if old.client != new.client or old.server != new.server:
        return False
    if new.kind is Kind.ONCE or old.kind is Kind.ONCE:
        return False
    if new.kind is Kind.BLOCK:
        return old.kind is Kind.BLOCK
    return old.kind in (Kind.ALWAYS, Kind.DENY) and old.folder == new.folder


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The answer to a server's query and the decisions to store afterwards."""

    reply: Allow | Deny
    decisions: list[Decision]
    changed: bool


def query(
    fingerprint: str,
    caller: str,
    client: str,
    folder: bytes,
    decisions: Sequence[Decision],
    now: float,
    ttl: float = ONCE_TTL,
) -> QueryResult:
    """Check a server qube's query for grant `fingerprint`.

    `caller` is the qube that called the query service (the server, per
    qrexec), `client` the qube that the server says called it. A one-time grant
    is consumed by a successful query.
    """
    unchanged = list(decisions)
    grant = next((d for d in decisions if d.fingerprint == fingerprint), None)
    if grant is None or grant.kind not in (Kind.ONCE, Kind.ALWAYS):
        return QueryResult(Deny("unknown"), unchanged, False)
    if grant.server != caller or grant.client != client:
        return QueryResult(Deny("mismatch"), unchanged, False)
    if policy_refusal(client, caller) is not None:
        return QueryResult(Deny("policy"), unchanged, False)
    if is_blocked(client, caller, decisions):
        return QueryResult(Deny("block"), unchanged, False)
    if not is_within(folder, grant.folder):
        return QueryResult(Deny("outside"), unchanged, False)
    if grant.kind is Kind.ALWAYS and is_disposable(client):
        return QueryResult(Deny("policy"), unchanged, False)
    if grant.kind is Kind.ONCE:
        remaining = [d for d in decisions if d is not grant]
        if not is_live(grant, now, ttl):
            return QueryResult(Deny("expired"), remaining, True)
        return QueryResult(Allow(grant.fingerprint, grant.mode), remaining, True)
    return QueryResult(
        Allow(grant.fingerprint, grant.mode), used(decisions, grant.fingerprint, now), True
    )


def without(decisions: Iterable[Decision], fingerprint: str) -> list[Decision]:
    """The decisions without the one of `fingerprint` (revocation)."""
    return [d for d in decisions if d.fingerprint != fingerprint]
