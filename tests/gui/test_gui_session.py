"""The GUI fixture itself: a real GTK window is seen through AT-SPI, takes keys, shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import Atspi, Keys, wait_for

from qsf_sim.xsession import XSession

PROGRAM = r"""
import sys
import gi
gi.require_version("Gtk", "3.0")
from gi.repository import Gtk
window = Gtk.Window(title="fixture probe")
entry = Gtk.Entry()
window.add(entry)
window.connect("destroy", Gtk.main_quit)
entry.connect("activate", lambda e: (print(e.get_text(), flush=True), Gtk.main_quit()))
window.show_all()
window.present()
Gtk.main()
"""


def test_window_tree_keys_and_screenshot(gui_session: XSession, atspi: Atspi, keys: Keys,
                                         screenshot: object, tmp_path: Path) -> None:
    script = tmp_path / "fixture_probe.py"
    script.write_text(PROGRAM)
    with subprocess.Popen([sys.executable, str(script)], env=gui_session.env(),
                          stdout=subprocess.PIPE, text=True) as probe:
        try:
            app = atspi.application("fixture_probe.py")
            frame = atspi.find(app, "frame", "fixture probe")
            entry = atspi.find(frame, "text")
            window = keys.window("fixture probe")
            keys.focus(window)
            wait_for(lambda: atspi.has_state(entry, "focused"), "focus in the entry")
            keys.type("hello")
            keys.press("Return")
            assert probe.communicate(timeout=20)[0] == "hello\n"
        finally:
            probe.kill()
    shot = gui_session.screenshot(tmp_path / "shot.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
