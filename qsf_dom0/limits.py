"""Prompt limits across processes: one open prompt per client, a few per minute.

Each service call is its own process, so the state lives in files under the
state directory (/run: gone after a reboot): a per-client lock file held with
flock while its prompt is open, and a JSON file of recent prompt times.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from qsf_dom0.store import atomic_write, locked_directory

RATE_WINDOW: Final = 60.0
RATE_FILE: Final = "prompt-times.json"
MAX_RATE_FILE: Final = 1024 * 1024


def admits(history: Sequence[float], now: float, limit: int, window: float = RATE_WINDOW) -> bool:
    """Whether another prompt fits: fewer than `limit` prompts in the last `window` s."""
    return sum(1 for t in history if now - window < t <= now) < limit


def recent(history: Sequence[float], now: float, window: float = RATE_WINDOW) -> list[float]:
    return [t for t in history if now - window < t <= now]


class PromptLimits:
    """Busy and rate limits for prompts, per (validated) client qube name."""

    def __init__(self, state_dir: Path, per_minute: int) -> None:
        self.state_dir = state_dir
        self.per_minute = per_minute

    @contextmanager
    def slot(self, client: str, now: float) -> Iterator[bool]:
        """Yield True while holding this client's prompt slot, False if busy or over rate."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(
            self.state_dir / f"prompt-{client}.lock",
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False  # a prompt for this client is open
                return
            yield self._count(client, now)
        finally:
            os.close(fd)

    def _count(self, client: str, now: float) -> bool:
        """Record a prompt for `client` at `now` if the rate allows it."""
        with locked_directory(self.state_dir) as directory_fd:
            times = _read_times(directory_fd)
            history = recent(times.get(client, []), now)
            if not admits(history, now, self.per_minute):
                return False
            times = {name: recent(ts, now) for name, ts in times.items()}
            times[client] = [*history, now]
            content = json.dumps({k: v for k, v in times.items() if v}).encode("ascii")
            atomic_write(directory_fd, RATE_FILE, content, 0o600)
            return True


def _read_times(directory_fd: int) -> Mapping[str, list[float]]:
    """The recorded prompt times; a damaged file counts as empty (it only limits)."""
    try:
        fd = os.open(RATE_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory_fd)
    except FileNotFoundError:
        return {}
    with os.fdopen(fd, "rb") as file:
        content = file.read(MAX_RATE_FILE + 1)
    try:
        document = json.loads(content)
    except ValueError:
        return {}
    if not isinstance(document, dict):
        return {}
    return {
        str(name): [float(t) for t in ts if isinstance(t, (int, float))]
        for name, ts in document.items()
        if isinstance(ts, list)
    }
