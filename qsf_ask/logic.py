"""What the folder-access dialog shows and answers, without a widget (testable headless).

`DialogLogic` holds one validated request. The GTK dialog (qsf_ask.dialog) asks it
for every text and for which buttons exist and are sensitive, forwards the window's
focus changes, clock ticks and the user's actions to it, and sends the answer it
returns. Rules:
  - Deny once is the default; Esc or closing the window is Deny once.
  - The allow buttons stay insensitive until the window has had the focus for
    FOCUS_DELAY seconds without interruption (a focus-stealing guard, as Qubes'
    own confirmation dialog has); losing the focus starts the wait again.
  - Allow always is absent for a disposable client (dom0 does not offer it).
  - The read-only switch is on and locked for a ro request; for rw it may be
    turned on (downgrade), never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from qsf_ask.protocol import LABELS, AskAnswer, AskRequest, display_path

FOCUS_DELAY: Final = 1.0
# A folder wraps after a "/" where it can; only a longer component breaks inside.
UNBROKEN_COMPONENT: Final = 40

# Button ids of the .ui file, in the order they appear, and what each answers.
BUTTONS: Final = {
    "block": "block",
    "deny_always": "deny-always",
    "deny_once": "deny-once",
    "allow_always": "allow-always",
    "allow_once": "allow-once",
}
ALLOW_BUTTONS: Final = ("allow_once", "allow_always")


@dataclass(frozen=True, slots=True)
class Texts:
    title: str
    client: str
    label_colour: str
    server: str
    folder: str
    access: str
    note: str


def folder_segments(shown: str) -> list[tuple[str, bool]]:
    """The shown folder cut into (text, may_break_inside) pieces that join to `shown`:
    each component short enough stays whole on a line, so that a line never ends at a
    hyphen or a dot the folder does not have there as the end of a component."""
    pieces: list[tuple[str, bool]] = []
    for index, component in enumerate(shown.split("/")):
        if index:
            pieces.append(("/", True))
        if component:
            pieces.append((component, len(component) > UNBROKEN_COMPONENT))
    return pieces


class DialogLogic:
    def __init__(self, request: AskRequest, focus_delay: float = FOCUS_DELAY) -> None:
        self.request = request
        self.focus_delay = focus_delay
        self.read_only = request.mode == "ro"
        self._focused_since: float | None = None
        self.answer: AskAnswer | None = None

    # What to show

    def texts(self) -> Texts:
        request = self.request
        access = "read and write" if request.mode == "rw" else "read only"
        note = ("A disposable qube can be allowed only once."
                if request.disposable else
                "Block refuses every folder of this server to this qube, now and later.")
        return Texts(
            title="Folder access request",
            client=request.client,
            label_colour=LABELS[request.label],
            server=request.server,
            folder=display_path(request.folder),
            access=access,
            note=note,
        )

    def offered(self, button: str) -> bool:
        """Whether a button is shown at all."""
        return BUTTONS[button] in self.request.choices

    def sensitive(self, button: str, now: float) -> bool:
        if not self.offered(button) or self.answer is not None:
            return False
        if button in ALLOW_BUTTONS:
            return self.allow_ready(now)
        return True

    def allow_ready(self, now: float) -> bool:
        since = self._focused_since
        return since is not None and now - since >= self.focus_delay

    def read_only_locked(self) -> bool:
        """The switch cannot be changed: the request is read-only already."""
        return self.request.mode == "ro"

    # What happens

    def focus_in(self, now: float) -> None:
        if self._focused_since is None:
            self._focused_since = now

    def focus_out(self) -> None:
        self._focused_since = None

    def set_read_only(self, value: bool) -> bool:
        """Set the switch; returns the state it really has (ro requests stay ro)."""
        self.read_only = True if self.read_only_locked() else value
        return self.read_only

    def press(self, button: str, now: float) -> AskAnswer | None:
        """The answer for a button, or None when it is not (yet) usable (ignored)."""
        if not self.sensitive(button, now):
            return None
        choice = BUTTONS[button]
        mode = "ro" if self.read_only or choice not in ("allow-once", "allow-always") else "rw"
        self.answer = AskAnswer(choice, mode)
        return self.answer

    def cancel(self) -> AskAnswer:
        """Esc, the window closed, the timeout: deny this once."""
        if self.answer is None:
            self.answer = AskAnswer("deny-once", "ro")
        return self.answer
