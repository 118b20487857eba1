"""The folder share manager's window (GTK 3): the widgets around `ManagerModel`.

The layout is manager.ui (package data). Everything the window decides lives in
qsf_dom0.manager; this module only moves texts between the model and widgets.
"""

from __future__ import annotations

import datetime
from importlib import resources
from typing import Any

import gi

gi.require_version("Gtk", "3.0")
from gi.repository import GLib, Gtk  # noqa: E402

from qsf_dom0.manager import ManagerModel, mode_editable, revocable, shown  # noqa: E402


def format_time(moment: float | None) -> str:
    if moment is None:
        return "never"
    return datetime.datetime.fromtimestamp(moment).strftime("%Y-%m-%d %H:%M")


class ManagerWindow:
    """The window; `poll_seconds` is how often the store is checked for changes."""

    def __init__(self, model: ManagerModel, poll_seconds: float = 1.0) -> None:
        self.model = model
        self.builder = Gtk.Builder()
        ui = resources.files("qsf_dom0").joinpath("manager.ui").read_text("utf-8")
        self.builder.add_from_string(ui)
        self.window: Any = self.widget("window")
        self.store: Any = self.widget("store")
        self.view: Any = self.widget("decisions")
        self.message: Any = self.widget("message")
        self.view.get_selection().connect("changed", lambda _s: self._update_buttons())
        self.widget("revoke").connect("clicked", lambda _b: self._revoke())
        self.widget("make_ro").connect("clicked", lambda _b: self._set_mode("ro"))
        self.widget("make_rw").connect("clicked", lambda _b: self._set_mode("rw"))
        self.widget("reload").connect("clicked", lambda _b: self._reload())
        self.widget("add").connect("clicked", lambda _b: self._add())
        self.window.connect("destroy", lambda _w: Gtk.main_quit())
        self.model.reload()
        self._fill()
        self._show_message()
        GLib.timeout_add(int(poll_seconds * 1000), self._poll)

    def widget(self, name: str) -> Any:
        found = self.builder.get_object(name)
        if found is None:
            raise LookupError(f"manager.ui has no object {name!r}")
        return found

    def _selected(self) -> str | None:
        store, position = self.view.get_selection().get_selected()
        return None if position is None else str(store[position][0])

    def _fill(self) -> None:
        keep = self._selected()
        self.store.clear()
        for row in self.model.rows:
            texts = shown(row, format_time)
            position = self.store.append([
                texts.id, texts.client, texts.server, texts.folder, texts.decision,
                texts.mode, texts.decided, texts.last_used, texts.pending, not texts.pending,
            ])  # fmt: skip
            if texts.id == keep:
                self.view.get_selection().select_iter(position)
        self._update_buttons()

    def _update_buttons(self) -> None:
        selected = self._selected()
        row = None if selected is None else self.model.row(selected)
        self.widget("revoke").set_sensitive(row is not None and revocable(row))
        editable = row is not None and mode_editable(row)
        self.widget("make_ro").set_sensitive(editable and row is not None and row.mode == "rw")
        self.widget("make_rw").set_sensitive(editable and row is not None and row.mode == "ro")

    def _show_message(self) -> None:
        text = self.model.message
        self.message.set_text(text or "")
        self.message.set_visible(bool(text))

    def _after(self, _changed: bool) -> None:
        self._fill()
        self._show_message()

    def _revoke(self) -> None:
        selected = self._selected()
        if selected is not None:
            self._after(self.model.revoke(selected))

    def _set_mode(self, mode: str) -> None:
        selected = self._selected()
        if selected is not None:
            self._after(self.model.set_mode(selected, mode))

    def _reload(self) -> None:
        self.model.message = None
        self.model.reload()
        self._after(True)

    def _add(self) -> None:
        verdict = self.widget("verdict").get_active_id() or ""
        added = self.model.add(
            verdict,
            self.widget("client").get_text(),
            self.widget("server").get_text(),
            self.widget("folder").get_text(),
            self.widget("read_only").get_active(),
        )
        if added:
            self.widget("folder").set_text("")
        self._after(added)

    def _poll(self) -> bool:
        if self.model.poll():
            self._fill()
        return True  # keep the timer


def run(model: ManagerModel, poll_seconds: float = 1.0) -> int:
    window = ManagerWindow(model, poll_seconds)
    window.window.show()
    Gtk.main()
    return 0
