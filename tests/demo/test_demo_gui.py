"""`demo --gui` without a display of the user's: the real dialog on a virtual display,
answered with its keys by the demo, its picture's path printed."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import support
from test_demo_run import DEMO, RUN_TIMEOUT, check_share_steps, workdir  # noqa: F401


def run_gui_demo(path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    for program in ("Xvfb", "xdotool", "import"):
        support.need_program(program)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run([*DEMO, "--workdir", str(path), "--gui", *options], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            errors="backslashreplace", timeout=RUN_TIMEOUT, check=False)
    print(result.stdout, result.stderr)
    return result


def picture_of(output: str) -> Path:
    match = re.search(r"A picture of the dialog as it appeared: (\S+\.png)$", output, re.M)
    assert match, "no picture path printed"
    picture = Path(match[1])
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return picture


def test_gui_demo_on_a_virtual_display(workdir: Path) -> None:  # noqa: F811
    result = run_gui_demo(workdir)
    assert result.returncode == 0
    assert "qsf-ask-agent runs on a virtual display (Xvfb :" in result.stdout
    check_share_steps(result.stdout)
    picture_of(result.stdout).unlink()  # the one file the demo leaves, on purpose


def test_gui_demo_refused_in_the_dialog(workdir: Path) -> None:  # noqa: F811
    result = run_gui_demo(workdir, "--answer", "never")
    assert result.returncode == 3
    assert "dom0 refused the folder: qvm-mount-folder: dom0: denied by the user" in result.stderr
    picture_of(result.stdout).unlink()
