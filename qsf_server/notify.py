"""Desktop notifications in the server qube: a folder starts or stops being served.

org.freedesktop.Notifications.Notify is called on the user's session bus by
GLib's `gdbus call` (Debian libglib2.0-bin, Fedora glib2: in every template), in
its own process: qsf_server gains no D-Bus dependency, and the 9P path never
waits for the notification. Every argument is written as a typed GVariant
literal, so gdbus never guesses a type from the text; names and the folder are
markup-escaped (the body may be shown as markup) and control characters are
escaped before that. No session bus or no gdbus: a log line, never a failure.
"""

from __future__ import annotations

import html
import logging
import os
import shutil
import stat
import subprocess
import threading
import unicodedata
from collections.abc import Mapping
from typing import Final

log = logging.getLogger("qsf_server.notify")

APP_NAME: Final = "Qubes shared folders"
ICON: Final = "folder-remote"
EXPIRE_MS: Final = 8000
CALL_TIMEOUT: Final = 10  # seconds gdbus waits for the notification server


def display_folder(folder: bytes) -> str:
    """The folder as text: undecodable bytes and control characters escaped."""
    text = folder.decode("utf-8", "backslashreplace")
    return "".join(
        char if unicodedata.category(char)[0] not in "CZ" or char == " " else f"\\u{ord(char):04x}"
        for char in text
    )


def markup(text: str) -> str:
    """Text safe in a notification body that may be read as markup."""
    return html.escape(text, quote=True)


def gvariant_string(text: str) -> str:
    """A GVariant text-format string literal: 'text' with quote and backslash escaped."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def session_bus(environ: Mapping[str, str]) -> str | None:
    """The session bus address: DBUS_SESSION_BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus."""
    address = environ.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    runtime = environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    socket = os.path.join(runtime, "bus")
    try:
        if stat.S_ISSOCK(os.stat(socket).st_mode):
            return f"unix:path={socket}"
    except OSError:
        pass
    return None


def notify_argv(gdbus: str, summary: str, body: str) -> list[str]:
    return [
        gdbus, "call", "--session", "--timeout", str(CALL_TIMEOUT),
        "--dest", "org.freedesktop.Notifications",
        "--object-path", "/org/freedesktop/Notifications",
        "--method", "org.freedesktop.Notifications.Notify",
        gvariant_string(APP_NAME),
        "uint32 0",
        gvariant_string(ICON),
        gvariant_string(summary),
        gvariant_string(body),
        "@as []",
        "@a{sv} {}",
        f"int32 {EXPIRE_MS}",
    ]  # fmt: skip


def messages(event: str, client: str, folder: bytes, mode: str) -> tuple[str, str]:
    """(summary, body) for `serving` or `released`; summary plain, body markup-escaped."""
    access = "read-only" if mode == "ro" else "read-write"
    shown = markup(display_folder(folder))
    if event == "serving":
        return (
            f"Sharing a folder with {client}",
            f"<b>{markup(client)}</b> mounted {shown} ({access}).",
        )
    return f"{client} released a folder", f"<b>{markup(client)}</b> no longer uses {shown}."


def send(
    summary: str, body: str, environ: Mapping[str, str] = os.environ
) -> threading.Thread | None:
    """Show a notification in the background; the thread (None: nothing to wait for)."""
    address = session_bus(environ)
    gdbus = shutil.which("gdbus", path=environ.get("PATH", os.defpath))
    if address is None or gdbus is None:
        missing = "no session bus" if address is None else "gdbus is not installed"
        log.warning("%s: notification not shown: %s", missing, summary)
        return None
    env = {**environ, "DBUS_SESSION_BUS_ADDRESS": address}
    argv = notify_argv(gdbus, summary, body)
    thread = threading.Thread(target=_call, args=(argv, env, summary), daemon=True,
                              name="qsf-notify")
    thread.start()
    return thread


def _call(argv: list[str], env: dict[str, str], summary: str) -> None:
    try:
        result = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, timeout=CALL_TIMEOUT + 5, check=False,
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("notification not shown (%s): %s", error, summary)
        return
    if result.returncode != 0:
        reason = result.stderr.decode("utf-8", "replace").strip()[:200]
        log.warning("notification not shown (%s): %s", reason, summary)
