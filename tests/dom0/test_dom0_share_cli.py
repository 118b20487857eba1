"""qvm-folder-share: every subcommand through main() and as the installed console script."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qsf_dom0 import policy, services
from qsf_dom0.config import Config
from qsf_dom0.decisions import Decision, Kind
from qsf_dom0.store import Store, encode
from qsf_dom0.tools import qvm_folder_share

NOW = 1_800_000_000.0
FP1 = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "dom0"


def run(root: Path, *args: str, clock: float = NOW) -> tuple[int, str, str]:
    """main() with QSF_DOM0_ROOT=root; (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = qvm_folder_share.main(
                list(args), {"QSF_DOM0_ROOT": str(root)}, lambda: clock
            )
        except SystemExit as exit_:
            status = int(exit_.code or 0)
    return status, out.getvalue(), err.getvalue()


def listing(root: Path, clock: float = NOW) -> list[dict[str, object]]:
    status, out, _ = run(root, "list", "--json", clock=clock)
    assert status == 0
    result: list[dict[str, object]] = json.loads(out)
    return result


def policy_lines(root: Path) -> tuple[list[str], list[str]]:
    config = Config.under(root)

    def lines(path: Path) -> list[str]:
        if not path.exists():
            return []
        return [x for x in path.read_text().splitlines() if not x.startswith("#")]

    return lines(config.grants_dir / policy.GRANTS_FILE), lines(config.once_dir / policy.ONCE_FILE)


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_allow_deny_block_list_and_policy(root: Path) -> None:
    status, out, err = run(root, "allow", "work", "vault", "/home/user/share/")
    assert (status, err) == (0, "")
    grant_id = out.split()[0]
    assert out == f"{grant_id} work -> vault allow always /home/user/share\n"
    assert run(root, "allow", "--once", "--read-only", "work", "vault", "/srv")[0] == 0
    assert run(root, "deny", "work", "vault", "/home/user/secret")[0] == 0
    assert run(root, "block", "personal", "vault")[0] == 0
    shown = listing(root, clock=NOW + 10)
    by_folder = {(row["client"], row["folder"]): row for row in shown}
    assert [(r["client"], r["folder"]) for r in shown] == [
        ("personal", "/"),
        ("work", "/home/user/secret"),
        ("work", "/home/user/share"),
        ("work", "/srv"),
    ]
    assert by_folder["work", "/home/user/share"] == {
        "id": grant_id,
        "client": "work",
        "server": "vault",
        "folder": "/home/user/share",
        "folder_base64": base64.b64encode(b"/home/user/share").decode(),
        "decision": "allow",
        "mode": "rw",
        "duration": "always",
        "decided": "2027-01-15T08:00:00Z",
        "last_used": None,
        "pending": False,
    }
    once = by_folder["work", "/srv"]
    assert (once["decision"], once["mode"], once["duration"], once["pending"]) == (
        "allow", "ro", "once", True)
    assert by_folder["work", "/home/user/secret"]["decision"] == "deny"
    assert by_folder["personal", "/"]["decision"] == "block"
    grants, once_lines = policy_lines(root)
    assert grants == [f"qsf.ConnectToFolder +{grant_id} work vault allow"]
    assert once_lines == [f"qsf.ConnectToFolder +{once['id']} work vault allow"]
    # A one-time grant made ahead of time expires as the dialog's do.
    assert [r["folder"] for r in listing(root, clock=NOW + 61)] == [
        "/", "/home/user/secret", "/home/user/share"]


def test_table_shows_last_use_recorded_by_the_query_service(root: Path) -> None:
    status, out, _ = run(root, "allow", "work", "vault", "/home/user/share")
    grant_id = out.split()[0]
    env = {"QREXEC_REMOTE_DOMAIN": "vault", "QREXEC_SERVICE_ARGUMENT": grant_id}
    stdin = os.memfd_create("stdin")
    os.write(stdin, b"work\n" + base64.b64encode(b"/home/user/share/sub") + b"\n")
    os.lseek(stdin, 0, os.SEEK_SET)
    read, write = os.pipe()
    services.query(stdin, write, env, Config.under(root), lambda: NOW + 3600)
    os.close(write)
    assert os.read(read, 100) == b"ok rw\n"
    [row] = listing(root)
    assert row["last_used"] == "2027-01-15T09:00:00Z"
    status, out, _ = run(root, "list")
    assert status == 0
    header, line = out.splitlines()
    assert header.split() == [
        "ID", "CLIENT", "SERVER", "DECISION", "MODE", "DECIDED", "LAST", "USED", "FOLDER"]
    assert line.split()[:5] == [grant_id[:12], "work", "vault", "allow", "always"]
    assert "never" not in line and line.endswith("  /home/user/share")


def test_a_new_allow_replaces_the_deny_of_the_same_folder(root: Path) -> None:
    run(root, "deny", "work", "vault", "/srv")
    run(root, "allow", "--ro", "work", "vault", "/srv")
    [row] = listing(root)
    assert (row["decision"], row["mode"]) == ("allow", "ro")


def test_revoke_by_id_prefix_client_and_server(root: Path) -> None:
    ids = [run(root, "allow", c, s, "/srv")[1].split()[0]
           for c, s in [("work", "vault"), ("work", "mail"), ("personal", "vault")]]
    status, out, _ = run(root, "revoke", ids[0][:8].upper())
    assert (status, out) == (0, f"revoked {ids[0]} work -> vault allow always /srv\n")
    assert {r["id"] for r in listing(root)} == set(ids[1:])
    assert policy_lines(root)[0] == sorted(
        [f"qsf.ConnectToFolder +{ids[2]} personal vault allow",
         f"qsf.ConnectToFolder +{ids[1]} work mail allow"], key=lambda x: x.split()[2])
    assert run(root, "revoke", "--server", "vault")[0] == 0
    assert [r["id"] for r in listing(root)] == [ids[1]]
    assert run(root, "revoke", "--client", "work", "--server", "vault")[0] == 1  # none left
    assert run(root, "revoke", "--client", "work")[0] == 0
    assert listing(root) == [] and policy_lines(root) == ([], [])


def test_revoke_of_several_ids_is_all_or_nothing(root: Path) -> None:
    grant = run(root, "allow", "work", "vault", "/srv")[1].split()[0]
    before = files(root)
    status, _, err = run(root, "revoke", grant, "abcdefabcdef")
    assert status == 1 and "no decision has id abcdefabcdef" in err
    assert files(root) == before


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        ([], 2, "required"),
        (["frobnicate"], 2, "invalid choice"),
        (["allow", "work", "vault"], 2, "required"),
        (["allow", "-work", "vault", "/srv"], 2, "not a qube name"),
        (["allow", "work", "vault", "relative/x"], 2, "not an absolute"),
        (["allow", "work", "vault", "/a/../etc"], 2, "not an absolute"),
        (["allow", "work", "vault", "/a//b"], 2, "not an absolute"),
        (["block", "work", "v" * 40], 2, "not a qube name"),
        (["revoke"], 2, "give decision ids"),
        (["revoke", "abc"], 2, "not a decision id"),
        (["revoke", "0123456789abcdef", "--client", "work"], 2, "give decision ids"),
        (["revoke", "abcdef00"], 1, "no decision has id"),
        (["allow", "dom0", "vault", "/srv"], 1, "dom0 never"),
        (["allow", "work", "dom0", "/srv"], 1, "dom0 never"),
        (["block", "work", "work"], 1, "cannot share a folder with itself"),
        (["allow", "disp12", "vault", "/srv"], 1, "never gets Always"),
        (["import-upstream", "/nonexistent/policy.db"], 1, "cannot read"),
    ],
)
def test_invalid_input_writes_nothing(
    root: Path, args: list[str], status: int, message: str
) -> None:
    got, out, err = run(root, *args)
    assert (got, out) == (status, "")
    assert message in err
    assert err.startswith(("usage:", "qvm-folder-share: error:"))
    assert files(root) == {}


def test_once_for_a_disposable_is_allowed(root: Path) -> None:
    assert run(root, "allow", "--once", "disp12", "vault", "/srv")[0] == 0
    assert listing(root)[0]["pending"] is True


def test_grant_refused_while_blocked(root: Path) -> None:
    run(root, "block", "work", "vault")
    before = files(root)
    status, _, err = run(root, "allow", "work", "vault", "/srv")
    assert status == 1 and "blocked" in err
    assert files(root) == before


def test_change_that_would_make_an_invalid_policy_writes_nothing(root: Path) -> None:
    # A store edited by hand with a loopback grant: the policy writer refuses the
    # line, so no change may go through and no file changes.
    config = Config.under(root)
    config.store_path.parent.mkdir(parents=True)
    loop = Decision(FP1, "work", "work", b"/srv", Kind.ALWAYS, "rw", NOW)
    config.store_path.write_bytes(encode([loop], 4))
    before = files(root)
    status, out, err = run(root, "allow", "work", "vault", "/srv")
    assert (status, out) == (1, "")
    assert "invalid qrexec policy, nothing written" in err and "loopback" in err
    assert files(root) == before


def test_malformed_store_is_reported_not_overwritten(root: Path) -> None:
    config = Config.under(root)
    config.store_path.parent.mkdir(parents=True)
    config.store_path.write_text("{ not json")
    status, _, err = run(root, "allow", "work", "vault", "/srv")
    assert status == 1 and "decision store is unusable" in err
    assert config.store_path.read_text() == "{ not json"
    assert run(root, "list")[0] == 1


def test_import_upstream(root: Path, tmp_path: Path) -> None:
    config = Config.under(root)
    upstream = {
        "A" * 32: {"source": "work", "target": "vault", "folder": "/home/user/a/",
                   "response": "ALLOW_ALWAYS"},
        "b" * 32: {"source": "work", "target": "vault", "folder": "/", "response": "DENY_ALWAYS"},
        "c" * 32: {"source": "work", "target": "vault", "folder": "/x", "response": "ALLOW_ONCE"},
        "d" * 32: {"source": "dom0", "target": "vault", "folder": "/x",
                   "response": "ALLOW_ALWAYS"},
        "bad": {"source": "work", "target": "vault", "folder": "/x", "response": "ALLOW_ALWAYS"},
    }
    # The store exists before policy.db appears: it is not imported on its own.
    run(root, "allow", "personal", "vault", "/srv")
    config.upstream_db.write_text(json.dumps(upstream))
    status, out, _ = run(root, "import-upstream")
    assert (status, out) == (0, f"imported 2 decisions from {config.upstream_db}, skipped 3\n")
    kinds = {(r["id"], r["decision"], r["folder"]) for r in listing(root)}
    assert ("a" * 32, "allow", "/home/user/a") in kinds
    assert ("b" * 32, "block", "/") in kinds
    # Again: everything is known by now.
    other = tmp_path / "policy.db"
    other.write_text(json.dumps(upstream))
    assert run(root, "import-upstream", str(other))[1].startswith("imported 0 decisions")
    assert len(listing(root)) == 3


def test_import_upstream_into_a_new_store(root: Path) -> None:
    config = Config.under(root)
    config.upstream_db.parent.mkdir(parents=True)
    config.upstream_db.write_text(json.dumps({
        "a" * 32: {"source": "work", "target": "vault", "folder": "/x",
                   "response": "ALLOW_ALWAYS"},
        "b" * 32: {"source": "work", "target": "vault", "folder": "/y", "response": "nonsense"},
    }))
    status, out, _ = run(root, "import-upstream")
    assert (status, out) == (0, f"imported 1 decision from {config.upstream_db}, skipped 1\n")
    assert [r["id"] for r in listing(root)] == ["a" * 32]
    assert policy_lines(root)[0] == [f"qsf.ConnectToFolder +{'a' * 32} work vault allow"]


def test_concurrent_services_and_cli_share_one_lock(root: Path) -> None:
    # The CLI holds the store's lock for its whole change: a service's write made
    # meanwhile is neither lost nor overwritten.
    store = Store(Config.under(root).store_path)
    with store.transaction() as transaction:
        transaction.replace(
            [Decision(FP1, "work", "vault", b"/home", Kind.ALWAYS, "rw", NOW)]
        )
    run(root, "allow", "personal", "vault", "/srv")
    assert {d.client for d in store.load()} == {"work", "personal"}


def test_installed_console_script(root: Path) -> None:
    script = shutil.which("qvm-folder-share", path=os.path.dirname(sys.executable))
    assert script is not None, "qvm-folder-share is not installed in the venv (pyproject)"
    env = {**os.environ, "QSF_DOM0_ROOT": str(root)}

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([script, *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    helped = call("--help")
    assert helped.returncode == 0 and "Exit status: 0 done" in helped.stdout
    for command in ("list", "allow", "deny", "block", "revoke", "import-upstream"):
        assert call(command, "--help").returncode == 0
    added = call("allow", "--ro", "work", "vault", "/home/user/share")
    assert added.returncode == 0, added.stderr
    grant_id = added.stdout.split()[0]
    shown = json.loads(call("list", "--json").stdout)
    assert [(r["id"], r["mode"]) for r in shown] == [(grant_id, "ro")]
    assert call("allow", "dom0", "vault", "/x").returncode == 1
    usage = call("allow", "work")
    assert usage.returncode == 2 and "usage:" in usage.stderr
    assert call("revoke", grant_id).returncode == 0
    assert json.loads(call("list", "--json").stdout) == []
