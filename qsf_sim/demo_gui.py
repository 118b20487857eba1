"""`demo --gui`: dom0's question as the real dialog (qsf-ask-agent in the simulated dom0).

On the user's display when $DISPLAY is set (the simulated dom0's Unix user is let
in with `xhost +SI:localuser:USER` for the demo's duration, and the user answers
in the window), else on a private Xvfb (qsf_sim.xsession): then nobody can click,
so the demo takes a screenshot of the dialog, prints its path, and gives the
unattended answer (--answer) with the dialog's own keys (xdotool), as a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Final

from qsf_sim.layout import ADMIN, unix_user
from qsf_sim.sim import Sim
from qsf_sim.xsession import XSession, XSessionError

TITLE: Final = "Folder access request"
WINDOW_TIMEOUT: Final = 60.0
# The dialog's access keys for the demo's answers (qsf_ask/folder_access.ui).
KEYS: Final = {"once": "alt+o", "always": "alt+a", "deny": "alt+d", "never": "alt+w",
               "block": "alt+b"}


class DemoGuiError(RuntimeError):
    pass


class DemoDisplay:
    """Where the dialog appears, and the agent showing it."""

    def __init__(self, sim: Sim, display: str | None, session_dir: Path,
                 screenshot: Path) -> None:
        self.sim = sim
        self.user_display = display
        self.session_dir = session_dir
        self.screenshot = screenshot
        self.xsession: XSession | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.granted_user = False
        self.screenshot_path: Path | None = None

    @property
    def virtual(self) -> bool:
        return self.user_display is None

    def env(self) -> dict[str, str]:
        if self.xsession is not None:
            return self.xsession.variables()
        assert self.user_display is not None
        return {"DISPLAY": self.user_display}

    def start(self) -> str:
        """Start the display (if virtual) and dom0's agent; a line saying where."""
        if self.virtual:
            self.xsession = XSession(self.session_dir, accessibility=False)
            try:
                self.xsession.start()
            except XSessionError as error:
                raise DemoGuiError(f"cannot start a virtual display: {error}") from None
            where = f"a virtual display (Xvfb {self.xsession.display})"
        else:
            self._let_dom0_in()
            where = f"your display {self.user_display}"
        self.agent = self.sim.start_ask_agent(ADMIN, self.env())
        return where

    def agent_pid(self) -> int | None:
        return self.agent.pid if self.agent is not None else None

    def _let_dom0_in(self) -> None:
        xhost = shutil.which("xhost")
        if xhost is None:
            return  # the display may still accept local clients
        result = subprocess.run([xhost, f"+SI:localuser:{unix_user(ADMIN)}"], capture_output=True,
                                env=self._user_env(), timeout=10, check=False)
        self.granted_user = result.returncode == 0

    def _user_env(self) -> dict[str, str]:
        return {**os.environ, "DISPLAY": self.user_display or ""}

    def answer_by_keyboard(self, answer: str, done: threading.Event) -> None:
        """On the virtual display: screenshot the dialog, then answer `answer`
        ("once rw", "never"...) with its keys until `done` (the mount returned)."""
        assert self.xsession is not None
        env = self.xsession.env()
        deadline = time.monotonic() + WINDOW_TIMEOUT
        window = ""
        while not window and not done.is_set() and time.monotonic() < deadline:
            found = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", f"^{TITLE}$"],
                                   env=env, capture_output=True, text=True, timeout=10)
            window = (found.stdout.split() or [""])[0]
            if not window:
                done.wait(0.1)
        if not window:
            return
        done.wait(0.3)  # let it draw before the picture
        try:
            self.screenshot_path = self.xsession.screenshot(self.screenshot, window)
        except (XSessionError, subprocess.CalledProcessError):
            self.screenshot_path = None
        words = answer.split()
        keys = [KEYS[words[0]]]
        if words[0] in ("once", "always") and words[1:] == ["ro"]:
            keys.insert(0, "alt+r")  # the read-only switch
        subprocess.run(["xdotool", "windowfocus", "--sync", window], env=env,
                       capture_output=True, timeout=10, check=False)
        pressed_switch = False
        while not done.is_set() and time.monotonic() < deadline:
            # The allow keys work once the window has had the focus for a second:
            # press until the dialog takes the answer (the mount then returns).
            for key in keys:
                if key == "alt+r":
                    if pressed_switch:
                        continue
                    pressed_switch = True
                subprocess.run(["xdotool", "key", "--clearmodifiers", key], env=env,
                               capture_output=True, timeout=10, check=False)
            done.wait(0.4)

    def stop(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        self.agent = None
        if self.granted_user:
            subprocess.run(["xhost", f"-SI:localuser:{unix_user(ADMIN)}"], capture_output=True,
                           env=self._user_env(), timeout=10, check=False)
            self.granted_user = False
        if self.xsession is not None:
            self.xsession.stop()
            self.xsession = None
