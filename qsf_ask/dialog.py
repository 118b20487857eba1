"""The folder access dialog: GTK 3 widgets from folder_access.ui, driven by DialogLogic.

    FolderDialog(request, on_answer).show()   # on_answer(AskAnswer) is called once

The caller runs the GLib main loop. Texts are set as plain text, or as markup with
every name escaped; the folder is shown as display_path escapes it, wrapped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from typing import Any, Final

import gi

gi.require_version("Gtk", "3.0")
gi.require_version("Gdk", "3.0")
from gi.repository import Gdk, GLib, Gtk  # noqa: E402

from qsf_ask.logic import BUTTONS, DialogLogic, folder_segments  # noqa: E402
from qsf_ask.protocol import AskAnswer, AskRequest  # noqa: E402

UI_FILE: Final = "folder_access.ui"
DIALOG_TIMEOUT: Final = 110.0  # below dom0's wait, so that dom0 hears "deny-once"


def load_ui() -> str:
    return resources.files("qsf_ask").joinpath(UI_FILE).read_text(encoding="utf-8")


class FolderDialog:
    def __init__(self, request: AskRequest, on_answer: Callable[[AskAnswer], None], *,
                 focus_delay: float | None = None, timeout: float = DIALOG_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logic = (DialogLogic(request) if focus_delay is None
                      else DialogLogic(request, focus_delay))
        self.on_answer = on_answer
        self.clock = clock
        self.timeout = timeout
        self.builder = Gtk.Builder()
        self.builder.add_from_string(load_ui())
        self.window: Any = self.builder.get_object("window")
        self.switch: Any = self.builder.get_object("read_only")
        self._fill()
        self._connect()

    def widget(self, name: str) -> Any:
        return self.builder.get_object(name)

    def _fill(self) -> None:
        texts = self.logic.texts()
        escape = GLib.markup_escape_text
        self.window.set_title(texts.title)
        self.widget("client_colour").set_markup(
            f'<span foreground="{texts.label_colour}" size="x-large">\u25cf</span>')
        self.widget("client_colour").get_accessible().set_name(
            f"label colour {self.logic.request.label}")
        self.widget("client").set_markup(f"<b>{escape(texts.client, -1)}</b>")
        self.widget("server").set_markup(f"<b>{escape(texts.server, -1)}</b>")
        # Wrapped after a "/" where it can, never with a hyphen Pango would add: the
        # exact characters of display_path.
        self.widget("folder").set_markup("".join(
            escape(text, -1) if breakable else
            f'<span allow_breaks="false">{escape(text, -1)}</span>'
            for text, breakable in folder_segments(texts.folder)).join(
            ('<span insert_hyphens="false">', "</span>")))
        self.widget("access").set_text(texts.access)
        self.widget("note").set_text(texts.note)
        self.switch.get_accessible().set_name("Read only")
        self.switch.set_active(self.logic.read_only)
        self.switch.set_sensitive(not self.logic.read_only_locked())
        for button in BUTTONS:
            self.widget(button).set_visible(self.logic.offered(button))
        self._refresh()

    def _connect(self) -> None:
        for button in BUTTONS:
            self.widget(button).connect("clicked", self._clicked, button)
        self.switch.connect("notify::active", self._switched)
        self.window.connect("notify::is-active", self._active_changed)
        self.window.connect("delete-event", self._deleted)
        self.window.connect("key-press-event", self._key)

    def show(self) -> None:
        self.window.show()
        self.window.present()
        self.widget("deny_once").grab_focus()
        GLib.timeout_add(int(self.timeout * 1000), self._timed_out)

    # Events

    def _active_changed(self, window: Any, _spec: Any) -> None:
        if self.window is None:
            return
        if window.is_active():
            self.logic.focus_in(self.clock())
            delay = int(self.logic.focus_delay * 1000) + 20
            GLib.timeout_add(delay, self._tick)
        else:
            self.logic.focus_out()
        self._refresh()

    # Timers end themselves once the dialog is gone (window None).

    def _tick(self) -> bool:
        if self.window is None:
            return False
        self._refresh()
        if self.logic.allow_ready(self.clock()) or self.logic.answer is not None:
            return False
        return bool(self.window.is_active())  # keep checking while focused

    def _refresh(self) -> None:
        if self.window is None:
            return
        now = self.clock()
        for button in BUTTONS:
            self.widget(button).set_sensitive(self.logic.sensitive(button, now))

    def _switched(self, switch: Any, _spec: Any) -> None:
        actual = self.logic.set_read_only(switch.get_active())
        if actual != switch.get_active():
            switch.set_active(actual)

    def _clicked(self, _widget: Any, button: str) -> None:
        answer = self.logic.press(button, self.clock())
        if answer is not None:
            self._finish(answer)

    def _key(self, _window: Any, event: Any) -> bool:
        if event.keyval == Gdk.KEY_Escape:
            self._finish(self.logic.cancel())
            return True
        return False

    def _deleted(self, *_args: Any) -> bool:
        self._finish(self.logic.cancel())
        return True

    def _timed_out(self) -> bool:
        if self.window is not None:
            self._finish(self.logic.cancel())
        return False

    def _finish(self, answer: AskAnswer) -> None:
        if self.window is None:
            return
        window, self.window = self.window, None
        window.destroy()
        self.on_answer(answer)
