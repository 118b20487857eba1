"""The decision store (format, atomic replace, lock, upstream import) and the policy writer."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from qsf_dom0 import policy
from qsf_dom0.decisions import Decision, Kind
from qsf_dom0.store import (
    Store,
    StoreError,
    decode,
    encode,
    import_upstream,
)

NOW = 1_700_000_000.0
FP1 = "0123456789abcdef0123456789abcdef"
FP2 = "fedcba9876543210fedcba9876543210"


def decision(fp: str = FP1, kind: Kind = Kind.ALWAYS, folder: bytes = b"/home/user/x") -> Decision:
    return Decision(fp, "work", "vault", folder, kind, "ro", NOW)


def test_round_trip_keeps_every_field_including_non_utf8_folders() -> None:
    decisions = [decision(), decision(FP2, Kind.ONCE, b"/home/user/\xff\n name")]
    assert decode(encode(decisions)) == decisions
    document = json.loads(encode(decisions))
    assert document["format"] == "qsf-decisions"
    assert document["version"] == 2


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(version=3),
        lambda d: d.update(version="2"),
        lambda d: d.update(version=True),
        lambda d: d.update(generation=-1),
        lambda d: d.update(generation="7"),
        lambda d: d["decisions"][0].update(last_used="today"),
        lambda d: d["decisions"][0].update(last_used=False),
        lambda d: d.pop("format"),
        lambda d: d["decisions"][0].update(client="-bad"),
        lambda d: d["decisions"][0].update(fingerprint="ABCDEF" * 5 + "ab"),
        lambda d: d["decisions"][0].update(folder="Lw=="[:-1]),
        lambda d: d["decisions"][0].update(folder="Li4="),  # ".."
        lambda d: d["decisions"][0].update(kind="maybe"),
        lambda d: d["decisions"][0].update(mode="wx"),
        lambda d: d["decisions"][0].update(created="yesterday"),
        lambda d: d["decisions"].append(dict(d["decisions"][0])),  # repeated fingerprint
    ],
)
def test_malformed_store_is_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    document = json.loads(encode([decision()]))
    mutate(document)
    with pytest.raises(StoreError):
        decode(json.dumps(document).encode())


def test_version_1_file_is_read_and_written_back_as_version_2(tmp_path: Path) -> None:
    path = tmp_path / "decisions.json"
    version1 = {
        "format": "qsf-decisions",
        "version": 1,
        "decisions": [
            {
                "fingerprint": FP1,
                "client": "work",
                "server": "vault",
                "folder": "L2hvbWUvdXNlci94",
                "kind": "always",
                "mode": "ro",
                "created": NOW,
            }
        ],
    }
    path.write_text(json.dumps(version1))
    store = Store(path)
    assert store.snapshot() == ([decision()], 0)
    assert json.loads(path.read_text())["version"] == 1  # reading never rewrites
    with store.transaction() as transaction:
        transaction.replace([*transaction.decisions, decision(FP2)])
    document = json.loads(path.read_text())
    assert (document["version"], document["generation"]) == (2, 1)
    assert [entry["last_used"] for entry in document["decisions"]] == [None, None]
    assert store.snapshot() == ([decision(), decision(FP2)], 1)


def test_generation_grows_at_every_write_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "decisions.json")
    assert store.snapshot() == ([], 0)
    for expected in (1, 2):
        with store.transaction() as transaction:
            transaction.replace([decision(FP1 if expected == 1 else FP2)])
        assert store.snapshot()[1] == expected
    with store.transaction() as transaction:
        transaction.replace(list(transaction.decisions))  # no change: no write
    assert store.snapshot()[1] == 2
    used = dataclasses.replace(decision(FP2), last_used=NOW + 5)
    with store.transaction() as transaction:
        transaction.replace([used])
    assert store.snapshot() == ([used], 3)


def test_transaction_writes_atomically_with_dot_temp_and_no_leftovers(tmp_path: Path) -> None:
    store = Store(tmp_path / "state" / "decisions.json")
    with store.transaction() as transaction:
        transaction.replace([decision()])
    assert store.load() == [decision()]
    assert sorted(os.listdir(tmp_path / "state")) == ["decisions.json"]
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "decisions.json").st_mode) == 0o640


def test_failed_transaction_leaves_the_old_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "decisions.json")
    with store.transaction() as transaction:
        transaction.replace([decision()])
    before = (tmp_path / "decisions.json").read_bytes()
    with pytest.raises(RuntimeError), store.transaction() as transaction:
        transaction.replace([])
        raise RuntimeError("boom")
    assert (tmp_path / "decisions.json").read_bytes() == before


def _add_many(path: str, base: int) -> None:
    store = Store(Path(path))
    for i in range(25):
        with store.transaction() as transaction:
            fp = f"{base + i:032x}"
            transaction.replace([*transaction.decisions, decision(fp)])


def test_lock_serialises_writers_in_several_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "decisions.json")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_many, args=(path, 1000 * n)) for n in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len(Store(Path(path)).load()) == 75  # no update lost


UPSTREAM = {
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa": {
        "source": "work", "target": "vault", "folder": "/home/user/Documents/",
        "response": "ALLOW_ALWAYS",
    },
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb": {
        "source": "work", "target": "vault", "folder": "/home/user/secret",
        "response": "DENY_ALWAYS",
    },
    "cccccccccccccccccccccccccccccccc": {
        "source": "untrusted", "target": "vault", "folder": "/", "response": "DENY_ALWAYS",
    },
    "dddddddddddddddddddddddddddddddd": {
        "source": "work", "target": "vault", "folder": "/tmp", "response": "ALLOW_ONETIME",
    },
    "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee": {
        "source": "work", "target": "vault", "folder": "/a/../b", "response": "ALLOW_ALWAYS",
    },
    "not-a-fingerprint": {
        "source": "work", "target": "vault", "folder": "/x", "response": "ALLOW_ALWAYS",
    },
    "ffffffffffffffffffffffffffffffff": {
        "source": "$anyvm", "target": "vault", "folder": "/x", "response": "ALLOW_ALWAYS",
    },
    # Entries whose policy line would be refused, which would stop every later change.
    "11111111111111111111111111111111": {
        "source": "work", "target": "dom0", "folder": "/x", "response": "ALLOW_ALWAYS",
    },
    "22222222222222222222222222222222": {
        "source": "work", "target": "work", "folder": "/x", "response": "ALLOW_ALWAYS",
    },
    "33333333333333333333333333333333": {
        "source": "disp7", "target": "vault", "folder": "/x", "response": "ALLOW_ALWAYS",
    },
}


def test_import_upstream_keeps_fingerprints_and_maps_responses() -> None:
    decisions, skipped = import_upstream(json.dumps(UPSTREAM).encode(), NOW)
    assert skipped == 7  # one-time, "..", bad fingerprint, bad name, dom0, loopback, disposable
    assert [(d.fingerprint[0], d.kind, d.folder) for d in decisions] == [
        ("a", Kind.ALWAYS, b"/home/user/Documents"),
        ("b", Kind.DENY, b"/home/user/secret"),
        ("c", Kind.BLOCK, b"/"),
    ]


def test_store_imports_upstream_once_when_missing(tmp_path: Path) -> None:
    upstream = tmp_path / "policy.db"
    upstream.write_text(json.dumps(UPSTREAM))
    store = Store(tmp_path / "qsf-decisions.json", upstream)
    with store.transaction() as transaction:
        assert len(transaction.decisions) == 3
    assert (tmp_path / "qsf-decisions.json").exists()
    upstream.write_text("{}")  # our store now rules
    assert len(store.load()) == 3


# Policy writer


def test_policy_lines_and_mode(tmp_path: Path) -> None:
    decisions = [
        decision(FP1, Kind.ALWAYS),
        decision(FP2, Kind.ONCE),
        decision("1" * 32, Kind.DENY),
        decision("2" * 32, Kind.BLOCK, b"/"),
        Decision("3" * 32, "work", "vault", b"/x", Kind.ONCE, "rw", NOW - 61),  # expired
    ]
    grants, once = tmp_path / "etc", tmp_path / "run"
    policy.sync(decisions, grants, once, NOW)
    grant_lines = (grants / policy.GRANTS_FILE).read_text().splitlines()
    once_lines = (once / policy.ONCE_FILE).read_text().splitlines()
    assert grant_lines[1:] == [f"qsf.ConnectToFolder +{FP1} work vault allow"]
    assert once_lines[1:] == [f"qsf.ConnectToFolder +{FP2} work vault allow"]  # stale one gone
    for path in (grants / policy.GRANTS_FILE, once / policy.ONCE_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o664
    assert sorted(os.listdir(grants)) == [policy.GRANTS_FILE]  # no temp file left


def test_unchanged_policy_is_not_rewritten(tmp_path: Path) -> None:
    lines = [policy.PolicyLine(FP1, "work", "vault")]
    assert policy.write_policy(tmp_path, policy.GRANTS_FILE, lines)
    inode = (tmp_path / policy.GRANTS_FILE).stat().st_ino
    assert not policy.write_policy(tmp_path, policy.GRANTS_FILE, lines)
    assert (tmp_path / policy.GRANTS_FILE).stat().st_ino == inode


@pytest.mark.parametrize(
    "line",
    [
        policy.PolicyLine("ABC", "work", "vault"),
        policy.PolicyLine(FP1.upper(), "work", "vault"),
        policy.PolicyLine(FP1, "@anyvm", "vault"),
        policy.PolicyLine(FP1, "work", "vault allow\nqsf.ConnectToFolder * @anyvm @anyvm"),
        policy.PolicyLine(FP1, "work", "dom0"),
        policy.PolicyLine(FP1, "dom0", "vault"),
        policy.PolicyLine(FP1, "work", "work"),
        policy.PolicyLine(FP1, "$anyvm", "vault"),
        policy.PolicyLine(FP1, "w" * 32, "vault"),
    ],
)
def test_malformed_line_is_never_written(tmp_path: Path, line: policy.PolicyLine) -> None:
    good = [policy.PolicyLine(FP2, "work", "vault")]
    policy.write_policy(tmp_path, policy.GRANTS_FILE, good)
    before = (tmp_path / policy.GRANTS_FILE).read_bytes()
    with pytest.raises(policy.PolicyError):
        policy.write_policy(tmp_path, policy.GRANTS_FILE, [*good, line])
    assert (tmp_path / policy.GRANTS_FILE).read_bytes() == before
    assert os.listdir(tmp_path) == [policy.GRANTS_FILE]


def test_static_policy_file_parses_as_qubes_policy() -> None:
    from support import REPO

    text = (REPO / "policy" / "80-qsf.policy").read_text()
    rules = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    assert rules == [
        ["qsf.AuthorizeFolderAccess", "*", "@anyvm", "@adminvm", "allow"],
        ["qsf.QueryFolderAuthorization", "*", "@anyvm", "@adminvm", "allow"],
        ["qsf.ConnectToFolder", "*", "@anyvm", "@anyvm", "deny"],
        ["qsf.AskFolderAccess", "*", "@adminvm", "@anyvm", "allow"],
        ["qsf.AskFolderAccess", "*", "@anyvm", "@anyvm", "deny"],
    ]
    # Generated files sort before the static one, so their allow lines win.
    assert sorted([policy.GRANTS_FILE, policy.ONCE_FILE, "80-qsf.policy"])[-1] == "80-qsf.policy"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")
def test_root_writes_the_store_as_its_directory_owner(tmp_path: Path) -> None:
    directory = tmp_path / "shared-folders"
    directory.mkdir()
    os.chown(directory, 1000, 1000)
    store = Store(directory / "qsf-decisions.json")
    with store.transaction() as transaction:
        transaction.replace([decision()])
    info = os.stat(directory / "qsf-decisions.json")
    assert (info.st_uid, info.st_gid) == (1000, 1000)
