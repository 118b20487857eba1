"""The pure decision functions, rule by rule."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qsf_dom0.decisions import (
    ONCE_TTL,
    Allow,
    Answer,
    Ask,
    Choice,
    Decision,
    Deny,
    Kind,
    Request,
    evaluate,
    prune,
    query,
    resolve,
)

NOW = 1_000_000.0
FP1 = "1" * 32
FP2 = "2" * 32
FP3 = "3" * 32
NEW = "f" * 32


def grant(
    kind: Kind,
    folder: bytes = b"/home/user/share",
    mode: str = "rw",
    fp: str = FP1,
    client: str = "work",
    server: str = "vault",
    created: float = NOW - 10,
) -> Decision:
    return Decision(fp, client, server, folder, kind, mode, created)


def req(
    folder: bytes = b"/home/user/share",
    mode: str = "rw",
    client: str = "work",
    server: str = "vault",
) -> Request:
    return Request(client, server, folder, mode)


# evaluate()


def test_nothing_stored_asks_with_every_choice() -> None:
    assert evaluate(req(), [], NOW) == Ask(tuple(Choice))


@pytest.mark.parametrize(("client", "server"), [("work", "dom0"), ("dom0", "vault")])
def test_dom0_is_never_a_server_nor_a_client(client: str, server: str) -> None:
    always = grant(Kind.ALWAYS, client=client, server=server)
    assert evaluate(req(client=client, server=server), [always], NOW) == Deny("policy")


def test_no_loopback() -> None:
    assert evaluate(req(client="work", server="work"), [], NOW) == Deny("policy")


def test_always_grant_allows_without_prompt() -> None:
    assert evaluate(req(), [grant(Kind.ALWAYS)], NOW) == Allow(FP1, "rw")


def test_always_grant_covers_subfolders_only() -> None:
    decisions = [grant(Kind.ALWAYS, folder=b"/home/user")]
    assert evaluate(req(folder=b"/home/user/a/b"), decisions, NOW) == Allow(FP1, "rw")
    assert isinstance(evaluate(req(folder=b"/home/username"), decisions, NOW), Ask)
    assert isinstance(evaluate(req(folder=b"/home"), decisions, NOW), Ask)


def test_grant_is_for_its_client_and_server_only() -> None:
    decisions = [grant(Kind.ALWAYS)]
    assert isinstance(evaluate(req(client="other"), decisions, NOW), Ask)
    assert isinstance(evaluate(req(server="other"), decisions, NOW), Ask)


def test_most_specific_folder_wins_deny_below_allow() -> None:
    decisions = [
        grant(Kind.ALWAYS, folder=b"/home/user", fp=FP1),
        grant(Kind.DENY, folder=b"/home/user/secret", fp=FP2),
    ]
    assert evaluate(req(folder=b"/home/user/secret/x"), decisions, NOW) == Deny("user")
    assert evaluate(req(folder=b"/home/user/public"), decisions, NOW) == Allow(FP1, "rw")


def test_most_specific_folder_wins_allow_below_deny() -> None:
    decisions = [
        grant(Kind.DENY, folder=b"/", fp=FP1),
        grant(Kind.ALWAYS, folder=b"/home/user/share", fp=FP2),
    ]
    assert evaluate(req(), decisions, NOW) == Allow(FP2, "rw")
    assert evaluate(req(folder=b"/etc"), decisions, NOW) == Deny("user")


def test_deny_outranks_allow_on_the_same_folder() -> None:
    decisions = [grant(Kind.ALWAYS, fp=FP1), grant(Kind.DENY, fp=FP2)]
    assert evaluate(req(), decisions, NOW) == Deny("user")


def test_block_denies_everything_even_with_an_always_grant() -> None:
    decisions = [grant(Kind.ALWAYS, fp=FP1), grant(Kind.BLOCK, folder=b"/", fp=FP2)]
    assert evaluate(req(), decisions, NOW) == Deny("block")
    assert evaluate(req(folder=b"/"), decisions, NOW) == Deny("block")
    # ... but only from that client to that server
    assert isinstance(evaluate(req(client="other"), decisions, NOW), Ask)


def test_ro_request_matches_rw_grant_and_mounts_read_only() -> None:
    assert evaluate(req(mode="ro"), [grant(Kind.ALWAYS, mode="rw")], NOW) == Allow(FP1, "ro")


def test_ro_request_matches_ro_grant() -> None:
    assert evaluate(req(mode="ro"), [grant(Kind.ALWAYS, mode="ro")], NOW) == Allow(FP1, "ro")


def test_rw_request_never_matches_ro_grant() -> None:
    assert isinstance(evaluate(req(mode="rw"), [grant(Kind.ALWAYS, mode="ro")], NOW), Ask)


def test_disposable_never_uses_an_always_grant_nor_is_offered_always() -> None:
    decisions = [grant(Kind.ALWAYS, client="disp1234")]
    outcome = evaluate(req(client="disp1234"), decisions, NOW)
    assert isinstance(outcome, Ask)
    assert Choice.ALLOW_ALWAYS not in outcome.choices
    assert Choice.ALLOW_ONCE in outcome.choices


def test_unused_once_grant_does_not_skip_the_prompt() -> None:
    assert isinstance(evaluate(req(), [grant(Kind.ONCE)], NOW), Ask)


def test_prune_drops_once_grants_after_ttl() -> None:
    fresh = grant(Kind.ONCE, fp=FP1, created=NOW - ONCE_TTL + 1)
    stale = grant(Kind.ONCE, fp=FP2, created=NOW - ONCE_TTL - 1)
    always = grant(Kind.ALWAYS, fp=FP3, created=NOW - 10 * ONCE_TTL)
    assert prune([fresh, stale, always], NOW) == [fresh, always]


# resolve()


def test_allow_once_makes_a_once_grant() -> None:
    result = resolve(req(), Answer(Choice.ALLOW_ONCE, "rw"), [], NOW, NEW)
    assert result.reply == Allow(NEW, "rw")
    assert result.decisions == [Decision(NEW, "work", "vault", b"/home/user/share",
                                         Kind.ONCE, "rw", NOW)]


def test_allow_always_replaces_the_remembered_decision_for_that_folder() -> None:
    old = grant(Kind.ALWAYS, mode="ro", fp=FP1)
    other_folder = grant(Kind.ALWAYS, folder=b"/srv", fp=FP2)
    result = resolve(req(), Answer(Choice.ALLOW_ALWAYS, "rw"), [old, other_folder], NOW, NEW)
    assert result.reply == Allow(NEW, "rw")
    assert [d.fingerprint for d in result.decisions] == [FP2, NEW]


def test_dialog_may_downgrade_rw_to_ro_never_upgrade() -> None:
    down = resolve(req(mode="rw"), Answer(Choice.ALLOW_ONCE, "ro"), [], NOW, NEW)
    assert down.reply == Allow(NEW, "ro")
    up = resolve(req(mode="ro"), Answer(Choice.ALLOW_ONCE, "rw"), [], NOW, NEW)
    assert up.reply == Allow(NEW, "ro")


def test_deny_once_stores_nothing() -> None:
    result = resolve(req(), Answer(Choice.DENY_ONCE, "ro"), [], NOW, NEW)
    assert result.reply == Deny("user")
    assert result.decisions == []


def test_deny_always_is_remembered() -> None:
    result = resolve(req(), Answer(Choice.DENY_ALWAYS, "ro"), [], NOW, NEW)
    assert result.reply == Deny("user")
    assert evaluate(req(folder=b"/home/user/share/x"), result.decisions, NOW) == Deny("user")


def test_block_is_stored_on_root() -> None:
    result = resolve(req(), Answer(Choice.BLOCK, "ro"), [], NOW, NEW)
    assert result.reply == Deny("block")
    assert [(d.kind, d.folder) for d in result.decisions] == [(Kind.BLOCK, b"/")]
    assert evaluate(req(folder=b"/etc"), result.decisions, NOW) == Deny("block")


def test_disposable_answer_always_becomes_once() -> None:
    result = resolve(req(client="disp7"), Answer(Choice.ALLOW_ALWAYS, "rw"), [], NOW, NEW)
    assert [d.kind for d in result.decisions] == [Kind.ONCE]
    assert result.reply == Allow(NEW, "rw")


def test_block_stored_while_the_dialog_was_open_wins() -> None:
    blocked = [grant(Kind.BLOCK, folder=b"/", fp=FP1)]
    result = resolve(req(), Answer(Choice.ALLOW_ALWAYS, "rw"), blocked, NOW, NEW)
    assert result.reply == Deny("block")
    assert result.decisions == blocked


# query()


def test_query_always_grant_ok_and_kept_with_its_last_use() -> None:
    decisions = [grant(Kind.ALWAYS, mode="ro")]
    result = query(FP1, "vault", "work", b"/home/user/share/sub", decisions, NOW)
    assert result.reply == Allow(FP1, "ro")
    assert result.decisions == [dataclasses.replace(decisions[0], last_used=NOW)]
    assert result.changed


def test_query_once_grant_is_consumed() -> None:
    decisions = [grant(Kind.ONCE)]
    first = query(FP1, "vault", "work", b"/home/user/share", decisions, NOW)
    assert first.reply == Allow(FP1, "rw")
    assert first.decisions == []
    second = query(FP1, "vault", "work", b"/home/user/share", first.decisions, NOW)
    assert second.reply == Deny("unknown")


def test_query_once_grant_expires() -> None:
    decisions = [grant(Kind.ONCE, created=NOW - ONCE_TTL - 0.5)]
    result = query(FP1, "vault", "work", b"/home/user/share", decisions, NOW)
    assert result.reply == Deny("expired")
    assert result.decisions == []


@pytest.mark.parametrize(
    ("fp", "caller", "client", "folder", "reason"),
    [
        (FP2, "vault", "work", b"/home/user/share", "unknown"),  # forged fingerprint
        (FP1, "other", "work", b"/home/user/share", "mismatch"),  # wrong server calls
        (FP1, "vault", "other", b"/home/user/share", "mismatch"),  # used by another client
        (FP1, "vault", "work", b"/home/user", "outside"),  # above the grant
        (FP1, "vault", "work", b"/home/user/shared", "outside"),  # sibling prefix
    ],
)
def test_query_refusals(fp: str, caller: str, client: str, folder: bytes, reason: str) -> None:
    decisions = [grant(Kind.ALWAYS)]
    result = query(fp, caller, client, folder, decisions, NOW)
    assert result.reply == Deny(reason)
    assert result.decisions == decisions


def test_query_refuses_deny_and_block_fingerprints() -> None:
    for kind in (Kind.DENY, Kind.BLOCK):
        result = query(FP1, "vault", "work", b"/home/user/share", [grant(kind)], NOW)
        assert result.reply == Deny("unknown")


def test_query_refuses_when_blocked_after_the_grant() -> None:
    decisions = [grant(Kind.ALWAYS, fp=FP1), grant(Kind.BLOCK, folder=b"/", fp=FP2)]
    assert query(FP1, "vault", "work", b"/home/user/share", decisions, NOW).reply == Deny("block")


def test_query_refuses_always_grant_for_disposable() -> None:
    decisions = [grant(Kind.ALWAYS, client="disp9")]
    result = query(FP1, "vault", "disp9", b"/home/user/share", decisions, NOW)
    assert result.reply == Deny("policy")


names = st.sampled_from(["work", "vault", "disp3", "dom0", "personal"])
folders = st.lists(st.sampled_from([b"a", b"b", b"ab"]), max_size=3).map(
    lambda parts: b"/" + b"/".join(parts)
)
decision_lists = st.lists(
    st.builds(
        Decision,
        fingerprint=st.sampled_from([FP1, FP2, FP3]),
        client=names,
        server=names,
        folder=folders,
        kind=st.sampled_from(Kind),
        mode=st.sampled_from(["ro", "rw"]),
        created=st.floats(NOW - 200, NOW),
    ),
    max_size=6,
)


@given(decision_lists, names, names, folders, st.sampled_from(["ro", "rw"]))
def test_evaluate_invariants(
    decisions: list[Decision], client: str, server: str, folder: bytes, mode: str
) -> None:
    request = Request(client, server, folder, mode)
    outcome = evaluate(request, decisions, NOW)
    if isinstance(outcome, Allow):
        granted = next(d for d in decisions if d.fingerprint == outcome.fingerprint)
        assert granted.kind is Kind.ALWAYS
        assert (granted.client, granted.server) == (client, server)
        assert folder == granted.folder or folder.startswith(granted.folder.rstrip(b"/") + b"/")
        assert "dom0" not in (client, server) and client != server
        assert not client.startswith("disp")
        assert mode == "ro" or granted.mode == "rw"
        assert outcome.mode == mode
        assert not any(
            d.kind is Kind.BLOCK and (d.client, d.server) == (client, server) for d in decisions
        )
