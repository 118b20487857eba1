"""The systemd user unit that mounts recorded shares at session start, and its preset."""

from __future__ import annotations

import configparser
import os
import subprocess
from pathlib import Path

import pytest
import support

UNITS = support.REPO / "packaging" / "systemd" / "user"
PRESET = support.REPO / "packaging" / "systemd" / "user-preset" / "80-qsf.preset"
INSTALLED_COMMAND = "/usr/bin/qvm-mount-folder"


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNITS / name)
    return unit


def test_the_unit_runs_mount_all_and_spares_the_shares_processes() -> None:
    unit = _unit("qsf-mount-persistent.service")
    service = unit["Service"]
    assert service["ExecStart"] == f"{INSTALLED_COMMAND} --mount-persistent"
    assert service["Type"] == "exec"
    assert service["RemainAfterExit"] == "yes" and service["KillMode"] == "process"
    assert unit["Install"]["WantedBy"] == "default.target"
    assert unit["Unit"]["ConditionPathExists"] == "%E/qsf/shares.json"


def test_the_preset_enables_every_shipped_unit() -> None:
    lines = [line.split() for line in PRESET.read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines == [["enable", path.name] for path in sorted(UNITS.glob("*.service"))]


@pytest.mark.parametrize("scope", ["--user", "--system"])
def test_systemd_analyze_verify(scope: str, tmp_path: Path) -> None:
    """verify checks that ExecStart exists: point it at this installation's command."""
    analyze = support.need_program("systemd-analyze")
    command = support.venv_program("qvm-mount-folder")
    for path in UNITS.glob("*.service"):
        text = path.read_text()
        assert INSTALLED_COMMAND in text
        (tmp_path / path.name).write_text(text.replace(INSTALLED_COMMAND, command))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    # --man=no: the man pages are installed by the packages, not in this checkout.
    argv = [analyze, "--man=no", "verify", *sorted(map(str, tmp_path.glob("*.service")))]
    if scope == "--user":
        argv.insert(1, "--user")
    result = subprocess.run(argv, capture_output=True, text=True, check=False,
                            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
    # and it would fail on a broken unit
    (tmp_path / "qsf-mount-persistent.service").write_text(
        (tmp_path / "qsf-mount-persistent.service").read_text().replace("Type=exec", "Type=bogus"))
    broken = subprocess.run(argv, capture_output=True, text=True, check=False,
                            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert "bogus" in broken.stderr
