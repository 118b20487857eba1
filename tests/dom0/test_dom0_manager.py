"""The folder share manager's logic (qsf_dom0.manager), without any widget."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qsf_dom0 import policy
from qsf_dom0.admin import Admin
from qsf_dom0.config import Config
from qsf_dom0.manager import STALE_MESSAGE, ManagerModel, mode_editable, revocable, shown

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def admin(tmp_path: Path, clock: Clock) -> Admin:
    return Admin(Config.under(tmp_path), clock)


def grants(admin: Admin) -> list[str]:
    path = admin.config.grants_dir / policy.GRANTS_FILE
    return [x for x in path.read_text().splitlines() if not x.startswith("#")]


def test_lists_and_revokes(admin: Admin) -> None:
    admin.allow("work", "vault", b"/srv", "rw")
    admin.deny("work", "vault", b"/srv/secret")
    model = ManagerModel(admin)
    assert model.reload()
    assert [(r.verdict, r.folder) for r in model.rows] == [("allow", b"/srv"),
                                                          ("deny", b"/srv/secret")]
    grant = model.rows[0]
    assert model.revoke(grant.id)
    assert model.message is not None and model.message.startswith("Revoked: work -> vault")
    assert [r.verdict for r in model.rows] == ["deny"]
    assert grants(admin) == []


def test_edits_mode_and_the_policy_keeps_the_grant(admin: Admin) -> None:
    admin.allow("work", "vault", b"/srv", "rw")
    model = ManagerModel(admin)
    model.reload()
    grant = model.rows[0]
    assert model.set_mode(grant.id, "ro")
    assert model.rows[0].mode == "ro" and model.rows[0].id == grant.id
    assert grants(admin) == [f"qsf.ConnectToFolder +{grant.id} work vault allow"]
    deny = admin.deny("work", "vault", b"/x").decisions[-1]
    model.reload()
    assert not model.set_mode(deny.fingerprint, "rw")  # a deny has no mode


def test_pending_one_time_grant_shown_not_editable(admin: Admin, clock: Clock) -> None:
    admin.allow("work", "vault", b"/srv", "rw", once=True)
    model = ManagerModel(admin)
    model.reload()
    [row] = model.rows
    assert row.pending and not revocable(row) and not mode_editable(row)
    assert shown(row, str).decision == "allow once (pending)"
    generation = model.generation
    assert not model.revoke(row.id)
    assert not model.set_mode(row.id, "ro")
    assert model.generation == generation and len(model.rows) == 1  # nothing written
    # It expires without a write: the next poll drops it.
    assert not model.poll()
    clock.now += 61
    assert model.poll()
    assert model.rows == []


def test_stale_save_is_refused_and_reloaded(admin: Admin) -> None:
    admin.allow("work", "vault", b"/srv", "rw")
    model = ManagerModel(admin)
    model.reload()
    grant = model.rows[0]
    admin.allow("mail", "vault", b"/srv", "ro")  # the CLI, meanwhile
    assert not model.revoke(grant.id)
    assert model.message == STALE_MESSAGE
    assert {r.client for r in model.rows} == {"work", "mail"}  # reloaded, grant kept
    assert len(grants(admin)) == 2
    assert model.revoke(grant.id)  # against the reloaded generation it goes through
    assert {r.client for r in model.rows} == {"mail"}


def test_a_grant_used_meanwhile_makes_an_edit_stale(admin: Admin, clock: Clock) -> None:
    from qsf_dom0 import decisions

    grant = admin.allow("work", "vault", b"/srv", "rw").decisions[0]
    model = ManagerModel(admin)
    model.reload()
    admin.change(lambda current, now: decisions.used(current, grant.fingerprint, now + 5))
    assert not model.set_mode(grant.fingerprint, "ro")
    assert model.message == STALE_MESSAGE
    assert model.rows[0].last_used == NOW + 5 and model.rows[0].mode == "rw"


def test_poll_notices_a_change_underneath(admin: Admin) -> None:
    model = ManagerModel(admin)
    model.reload()
    assert not model.poll()
    admin.block("work", "vault")
    assert model.poll()
    assert [r.verdict for r in model.rows] == ["block"]
    assert not model.poll()


def test_add_ahead_of_time_and_form_validation(admin: Admin) -> None:
    model = ManagerModel(admin)
    model.reload()
    assert model.add("allow", " work ", "vault", "/home/user/share/", read_only=True)
    [row] = model.rows
    assert (row.verdict, row.mode, row.folder) == ("allow", "ro", b"/home/user/share")
    assert model.add("deny", "work", "vault", "/home/user/secret", read_only=False)
    assert [r.verdict for r in model.rows] == ["deny", "allow"]  # by folder
    before = sorted(os.listdir(admin.config.store_path.parent))
    generation = model.generation
    for args, expected in [
        (("allow", "-bad", "vault", "/x", False), "qube names"),
        (("allow", "work", "vault", "x/y", False), "absolute normalised"),
        (("allow", "work", "vault", "/a/../b", False), "absolute normalised"),
        (("allow", "dom0", "vault", "/x", False), "dom0 never"),
        (("allow", "disp3", "vault", "/x", False), "never gets Always"),
        (("block", "work", "vault", "/x", False), "allow or deny"),
    ]:
        assert not model.add(*args)
        assert model.message is not None and expected in model.message
    assert model.generation == generation
    assert sorted(os.listdir(admin.config.store_path.parent)) == before


def test_unreadable_store_is_reported(admin: Admin) -> None:
    admin.config.store_path.parent.mkdir(parents=True)
    admin.config.store_path.write_text("[]")
    model = ManagerModel(admin)
    assert not model.reload()
    assert model.message is not None and "cannot be read" in model.message


def test_manager_command_without_a_display(capsys: pytest.CaptureFixture[str]) -> None:
    from qsf_dom0.tools import qvm_folder_share_manager as tool

    assert tool.main([], environ={}) == 1
    assert "no display" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        tool.main(["--poll", "0"], environ={"DISPLAY": ":99"})
    assert usage.value.code == 2
    with pytest.raises(SystemExit) as helped:
        tool.main(["--help"])
    assert helped.value.code == 0
    assert "never saved over one made meanwhile" in capsys.readouterr().out.replace("\n", " ")


def test_desktop_entry_runs_the_console_script() -> None:
    import configparser
    import tomllib

    repo = Path(__file__).resolve().parents[2]
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # type: ignore[assignment,method-assign]
    entry.read(repo / "packaging" / "applications" / "qvm-folder-share-manager.desktop")
    desktop = entry["Desktop Entry"]
    assert (desktop["Type"], desktop["Name"], desktop["Terminal"]) == (
        "Application", "Folder share manager", "false")
    scripts = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[desktop["Exec"]] == "qsf_dom0.tools.qvm_folder_share_manager:main"
    assert desktop["Categories"].endswith(";")
