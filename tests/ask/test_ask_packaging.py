"""The files a package installs for the dialog: the autostart entry and the socket link."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess

import pytest
import support

from qsf_ask.agent import DEFAULT_SOCKET
from qsf_ask.protocol import SERVICE


def test_autostart_entry_starts_the_agent() -> None:
    path = support.REPO / "packaging" / "autostart" / "qsf-ask-agent.desktop"
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # type: ignore[assignment,method-assign]
    entry.read(path)
    desktop = entry["Desktop Entry"]
    assert (desktop["Type"], desktop["Exec"], desktop["NoDisplay"]) == (
        "Application", "qsf-ask-agent", "true")
    assert "DISPLAY" not in path.read_text()  # the session gives it its display
    validate = shutil.which("desktop-file-validate")
    if validate:
        result = subprocess.run([validate, str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_qubes_rpc_link_points_at_the_agent_socket() -> None:
    link = support.REPO / "packaging" / "qubes-rpc" / SERVICE
    assert link.is_symlink() and os.readlink(link) == str(DEFAULT_SOCKET)


def test_agent_help_and_refusal_without_a_display(tmp_path: object) -> None:
    agent = support.venv_program("qsf-ask-agent")
    result = subprocess.run([agent, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "qsf.AskFolderAccess" in result.stdout
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run([agent, "--socket", f"{tmp_path}/s"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 1 and "cannot open the display" in result.stderr


@pytest.mark.parametrize("name", ["qsf.AskFolderAccess"])
def test_no_executable_service_of_that_name(name: str) -> None:
    # It is a socket service: nothing in qubes-rpc/ (installed in every qube) may shadow it.
    assert not (support.REPO / "qubes-rpc" / name).exists()
