"""Mounting the recorded shares at session start (qvm-mount-folder --mount-persistent).

Every share is tried once; those whose server qube could not be reached (exit 7)
are tried again after an exponentially growing pause, until a total time bound.
A denial, a missing folder, a bad mount point or any other failure is final: it
is logged and shown to the user as a desktop notification, never retried. The
logic is pure over three injected effects (the attempt, the clock, the notifier).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from qsf_mount import mounts
from qsf_mount.request import EXIT_FAILURE, EXIT_OK, EXIT_UNREACHABLE, MountRequest

RETRY_FOR: Final = 300.0  # seconds of pauses in all, by default
NOTIFY_TIMEOUT: Final = 10.0  # seconds for notify-send or gdbus
APP_NAME: Final = "qsf"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Pauses between rounds: first, first*factor, ... at most `longest`; `total` in all."""

    first: float = 2.0
    factor: float = 2.0
    longest: float = 60.0
    total: float = RETRY_FOR

    def __post_init__(self) -> None:
        if not (0 < self.first <= self.longest and self.factor >= 1 and self.total >= 0):
            raise ValueError(f"not a bounded back-off: {self}")

    def pauses(self) -> Iterator[float]:
        """The pauses, each clipped so that their sum never exceeds `total`."""
        pause, spent = self.first, 0.0
        while spent < self.total:
            step = min(pause, self.longest, self.total - spent)
            spent += step
            yield step
            pause *= self.factor


class Clock(Protocol):
    def sleep(self, seconds: float) -> None: ...


# An attempt: (exit code, one line: what happened).
Attempt = Callable[[MountRequest], tuple[int, str]]
Notify = Callable[[str, str], None]


def log(message: str) -> None:
    """One line on stderr: the journal under systemd."""
    print(f"qvm-mount-folder: {message}", file=sys.stderr, flush=True)


def describe(request: MountRequest) -> str:
    return f"{mounts.source_name(request.server, request.folder)} at {request.mountpoint}"


def mount_all(shares: Sequence[MountRequest], attempt: Attempt, clock: Clock, notify: Notify,
              backoff: Backoff = Backoff()) -> int:
    """Mount every share, retrying unreachable servers; 0 when all are mounted, else 1."""
    pending = list(shares)
    failed = 0
    pauses = backoff.pauses()
    while pending:
        unreachable: list[tuple[MountRequest, str]] = []
        for share in pending:
            code, message = attempt(share)
            if code == EXIT_OK:
                log(f"{describe(share)}: {message}")
            elif code == EXIT_UNREACHABLE:
                unreachable.append((share, message))
            else:
                failed += 1
                log(f"{describe(share)}: {message} (exit {code}, not retried)")
                notify(f"Shared folder not mounted: {share.mountpoint}", message)
        pending = [share for share, _ in unreachable]
        if not pending:
            break
        pause = next(pauses, None)
        if pause is None:
            for share, message in unreachable:
                failed += 1
                log(f"{describe(share)}: {message}; giving up after {backoff.total:g} s")
                notify(f"Shared folder not mounted: {share.mountpoint}",
                       f"{message}; gave up after {backoff.total:g} s")
            break
        for share, message in unreachable:
            log(f"{describe(share)}: {message}; trying again in {pause:g} s")
        clock.sleep(pause)
    return EXIT_OK if failed == 0 else EXIT_FAILURE


# --- desktop notifications (org.freedesktop.Notifications on the session bus) ----------


def _markup_escaped(text: str) -> str:
    """Notification bodies may be read as markup: keep names from becoming tags."""
    text = "".join(char if char.isprintable() else "\N{REPLACEMENT CHARACTER}" for char in text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _gvariant_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def notify_argv(find_program: Callable[[str], str | None], summary: str,
                body: str) -> list[str] | None:
    """The command that shows the notification: notify-send, else gdbus; None if neither."""
    body = _markup_escaped(body)
    summary = "".join(char if char.isprintable() else "?" for char in summary)
    program = find_program("notify-send")
    if program is not None:
        return [program, f"--app-name={APP_NAME}", "--icon=dialog-warning", "--", summary, body]
    program = find_program("gdbus")
    if program is not None:
        return [program, "call", "--session", "--dest", "org.freedesktop.Notifications",
                "--object-path", "/org/freedesktop/Notifications",
                "--method", "org.freedesktop.Notifications.Notify",
                # GVariant text; typed so that gdbus needs no introspection and
                # "-1" is not read as an option.
                _gvariant_string(APP_NAME), "uint32 0", _gvariant_string("dialog-warning"),
                _gvariant_string(summary), _gvariant_string(body), "@as []", "@a{sv} {}",
                "int32 -1"]
    return None


def session_bus(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this session has a D-Bus session bus to show notifications on."""
    if environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return True
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    return bool(runtime) and os.path.exists(os.path.join(runtime, "bus"))


def desktop_notifier(find_program: Callable[[str], str | None]) -> Notify:
    """A Notify that shows a desktop notification, or only logs when it cannot."""
    def notify(summary: str, body: str) -> None:
        if not session_bus():
            log("no session bus: no desktop notification")
            return
        argv = notify_argv(find_program, summary, body)
        if argv is None:
            log("neither notify-send nor gdbus is installed: no desktop notification")
            return
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, timeout=NOTIFY_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            log(f"desktop notification failed: {error}")
            return
        if result.returncode != 0:
            reason = result.stderr.decode(errors="replace").strip().splitlines()
            log(f"desktop notification failed: {reason[-1] if reason else result.returncode}")
    return notify
