"""qsf's dom0 authorization service as the simulator runs it: the same code, another prompt.

In a simulated dom0, qsf.AuthorizeFolderAccess is `python3 -m qsf_sim.dom0_services MODE`
(installed by qsf_sim.tree instead of the project's wrapper, unless the simulation keeps
the project's file). It calls qsf_dom0.services.authorize with a prompt that exists only
here:
  scripted  answers from $QSF_DOM0_ROOT/run/qsf-sim/answers, one line per prompt, oldest
            first: `once|always|deny|never|block [ro|rw]`; none left denies. Every
            prompt is logged to .../run/qsf-sim/prompts as a JSON line.
  terminal  the terminal of the simulator's daemon, inherited as fd $QSF_SIM_TTY_FD (a
            service runs as dom0's own user, which may not open the user's terminal).
  gui       the real dialog: qsf_dom0.ask.GuiPrompt with the simulator's qube directory
            (qsf_sim.gui_domain), dom0's own agent socket, and qrexec-client-vm for a
            GUI qube.
A real dom0 never runs this module: its service is the project's qubes-rpc/ file.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from qsf_dom0.ask import GuiPrompt, LocalAgent, QrexecAgent
from qsf_dom0.config import Config
from qsf_dom0.decisions import Answer, Choice
from qsf_dom0.prompt import PromptRequest, parse_answer, question
from qsf_dom0.services import authorize
from qsf_sim.gui_domain import QUBES_FILE, SimQubeDirectory, remote_command
from qsf_sim.tree import DOM0_SIM_STATE, FOLDER_ANSWERS, FOLDER_PROMPTS

TTY_FD_VARIABLE = "QSF_SIM_TTY_FD"
TTY_TIMEOUT = 300.0
CHOICES = {"once": Choice.ALLOW_ONCE, "always": Choice.ALLOW_ALWAYS, "deny": Choice.DENY_ONCE,
           "never": Choice.DENY_ALWAYS, "block": Choice.BLOCK}


def parse_scripted(text: str) -> tuple[Choice, str | None]:
    words = text.split()
    if not 1 <= len(words) <= 2 or words[0] not in CHOICES:
        raise ValueError(f"not a folder answer: {text!r} (once|always|deny|never|block [ro|rw])")
    if len(words) == 2 and words[1] not in ("ro", "rw"):
        raise ValueError(f"not a mode: {words[1]!r}")
    return CHOICES[words[0]], words[1] if len(words) == 2 else None


def _answer(prompt: PromptRequest, choice: Choice, mode: str | None) -> Answer:
    if choice not in prompt.choices:
        return Answer(Choice.DENY_ONCE, "ro")
    wanted = mode or prompt.request.mode
    return Answer(choice, "ro" if prompt.request.mode == "ro" else wanted)


class ScriptedFolderPrompt:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def ask(self, prompt: PromptRequest) -> Answer:
        line = self._pop()
        try:
            answer = _answer(prompt, *parse_scripted(line)) if line else None
        except ValueError:
            answer = None
        if answer is None:
            answer = Answer(Choice.DENY_ONCE, "ro")
        request = prompt.request
        entry = {"client": request.client, "server": request.server,
                 "folder": base64.b64encode(request.folder).decode(), "mode": request.mode,
                 "choices": [c.value for c in prompt.choices],
                 "answer": answer.choice.value, "answer_mode": answer.mode}
        with open(self.directory / FOLDER_PROMPTS, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
        return answer

    def _pop(self) -> str:
        try:
            file = open(self.directory / FOLDER_ANSWERS, "r+", encoding="utf-8")  # noqa: SIM115
        except FileNotFoundError:
            return ""
        with file:
            fcntl.flock(file, fcntl.LOCK_EX)
            lines = file.read().splitlines()
            file.seek(0)
            file.truncate()
            file.write("".join(line + "\n" for line in lines[1:]))
        return lines[0] if lines else ""


class InheritedTerminalPrompt:
    """The same questions as qsf_dom0's terminal prompt, on an inherited terminal fd."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def ask(self, prompt: PromptRequest) -> Answer:
        deadline = time.monotonic() + TTY_TIMEOUT
        try:
            self._write(question(prompt))
            choice = parse_answer(prompt, self._line(deadline))
            mode = "ro"
            allowed = choice in (Choice.ALLOW_ONCE, Choice.ALLOW_ALWAYS)
            if allowed and prompt.request.mode == "rw":
                self._write("Allow writing? [y]es, [N]o (read-only): ")
                mode = "rw" if self._line(deadline).strip().lower() == "y" else "ro"
            self._write(f"qsf: {choice.value} ({mode}).\n")
            return Answer(choice, mode)
        except OSError:
            return Answer(Choice.DENY_ONCE, "ro")

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        while data:
            data = data[os.write(self.fd, data):]

    def _line(self, deadline: float) -> str:
        kept = b""
        while b"\n" not in kept and b"\r" not in kept and len(kept) < 256:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                return ""
            chunk = os.read(self.fd, 256)
            if not chunk:
                break
            kept += chunk
        return kept.splitlines()[0].decode("utf-8", "replace") if kept.strip() else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = Config.from_environ(os.environ)
    dom0_root = os.environ.get("QSF_DOM0_ROOT")
    if args == ["scripted"] and dom0_root:
        scripted = ScriptedFolderPrompt(Path(dom0_root) / DOM0_SIM_STATE)
        return authorize(0, 1, os.environ, config, scripted)
    if args == ["gui"] and dom0_root:
        state = Path(dom0_root) / DOM0_SIM_STATE
        gui = GuiPrompt(SimQubeDirectory(state / QUBES_FILE), LocalAgent(config.ask_socket),
                        QrexecAgent(remote_command))
        return authorize(0, 1, os.environ, config, gui)
    if args == ["terminal"]:
        tty = os.environ.get(TTY_FD_VARIABLE, "")
        prompt = InheritedTerminalPrompt(int(tty) if tty.isdigit() else -1)  # -1: denies
        return authorize(0, 1, os.environ, config, prompt)
    print("usage: python3 -m qsf_sim.dom0_services scripted|terminal|gui (in qsf_sim's dom0)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
