"""Change notification for one qsf session: inotify watches on the directories
the client has reached, turned into Rqsfwatch events (docs/PROTOCOL.md).

Every directory a fid is walked or attached to is watched (once per inode), up
to `max_watches`; each watch keeps a dup of the O_PATH descriptor the confined
walk found, so that the file an event names is stat-ed relative to it
(never following a symlink) to give its qid.path. Bounds: the kernel's own
queue (its overflow becomes a RESET event), `max_events` events kept here
between two Tqsfwatch (beyond: RESET), and `max_watches` (beyond, or when the
kernel refuses a watch or a descriptor: ENDED, after which nothing is watched
and the client must stop trusting its cache for long).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import deque
from dataclasses import dataclass
from typing import Final

import trio

from qsf_p9 import constants as c
from qsf_p9.codec import QSF_EVENT_OVERHEAD
from qsf_p9.messages import QsfEvent

from . import inotify
from .qids import QidMapper

log = logging.getLogger("qsf_server")

DEFAULT_MAX_WATCHES: Final = 4096
DEFAULT_MAX_EVENTS: Final = 8192
# Events arriving this soon after the first are answered in the same reply.
GATHER_SECONDS: Final = 0.005

_RESET: Final = QsfEvent(c.QSF_EV_RESET, 0, 0, b"")
_ENDED: Final = QsfEvent(c.QSF_EV_ENDED, 0, 0, b"")


@dataclass(slots=True)
class _Watched:
    fd: int  # a dup of the directory's O_PATH descriptor
    path: int  # its qid.path
    identity: tuple[int, int]


class Watcher:
    def __init__(self, qids: QidMapper, *, max_watches: int | None = None,
                 max_events: int | None = None) -> None:
        self._qids = qids
        self._max_watches = DEFAULT_MAX_WATCHES if max_watches is None else max_watches
        self._max_events = DEFAULT_MAX_EVENTS if max_events is None else max_events
        self._by_identity: dict[tuple[int, int], int] = {}
        self._watched: dict[int, _Watched] = {}
        self._pending: deque[QsfEvent] = deque()
        self._lock = trio.Lock()
        self._ended = False
        self._inotify: inotify.Inotify | None = None
        try:
            self._inotify = inotify.Inotify()
        except OSError as error:
            log.warning("no change notification: inotify: %s", error)
            self._end()

    @property
    def watches(self) -> int:
        return len(self._watched)

    def close(self) -> None:
        for watched in self._watched.values():
            os.close(watched.fd)
        self._watched.clear()
        self._by_identity.clear()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def _end(self) -> None:
        """Stop watching: the client gets ENDED and then no more events."""
        if self._ended:
            return
        self._ended = True
        self._pending.clear()
        self._pending.append(_ENDED)
        self.close()

    def watch(self, fd: int, st: os.stat_result) -> None:
        """Watch the directory open as fd (an O_PATH descriptor), if not yet watched."""
        if self._ended or not stat.S_ISDIR(st.st_mode):
            return
        identity = (st.st_dev, st.st_ino)
        if identity in self._by_identity:
            return
        assert self._inotify is not None
        if len(self._watched) >= self._max_watches:
            log.info("change notification ends: %d directories watched", len(self._watched))
            self._end()
            return
        try:
            own = os.dup(fd)
        except OSError as error:
            log.info("change notification ends: %s", error)
            self._end()
            return
        try:
            wd = self._inotify.add_watch(own)
        except OSError as error:
            os.close(own)
            if error.errno in (errno.ENOSPC, errno.ENOMEM, errno.EMFILE):
                log.info("change notification ends: inotify: %s", error)
                self._end()
            return  # gone meanwhile (ENOENT...): nothing to watch
        if wd in self._watched:  # the same directory by another identity: keep one
            os.close(own)
            return
        self._watched[wd] = _Watched(own, self._qids.path(*identity), identity)
        self._by_identity[identity] = wd

    async def next_events(self, budget: int) -> tuple[QsfEvent, ...]:
        """At least one event (waiting for it), at most `budget` bytes of them."""
        async with self._lock:
            while not self._pending:
                if self._inotify is None:
                    await trio.sleep_forever()  # ended and delivered: nothing ever comes
                assert self._inotify is not None
                await trio.lowlevel.wait_readable(self._inotify.fd)
                self._collect()
                if self._pending:
                    await trio.sleep(GATHER_SECONDS)
                    self._collect()
            return self._take(budget)

    def _take(self, budget: int) -> tuple[QsfEvent, ...]:
        out: list[QsfEvent] = []
        seen: set[QsfEvent] = set()
        while self._pending:
            event = self._pending[0]
            size = QSF_EVENT_OVERHEAD + len(event.name)
            if event not in seen:
                if size > budget:
                    break
                budget -= size
                out.append(event)
                seen.add(event)
            self._pending.popleft()
        return tuple(out)

    def _collect(self) -> None:
        """Turn what inotify has queued into pending events."""
        if self._inotify is None:
            return
        for raw in self._inotify.read():
            event = self._translate(raw)
            if event is None:
                continue
            if event.kind == c.QSF_EV_RESET or len(self._pending) >= self._max_events:
                self._pending.clear()
                self._pending.append(_RESET)
                continue
            self._pending.append(event)

    def _translate(self, raw: inotify.Event) -> QsfEvent | None:
        if raw.mask & inotify.IN_Q_OVERFLOW:
            return _RESET
        watched = self._watched.get(raw.wd)
        if watched is None:
            return None
        mask = raw.mask
        if mask & inotify.IN_IGNORED:
            del self._watched[raw.wd]
            self._by_identity.pop(watched.identity, None)
            os.close(watched.fd)
            return None
        if not raw.name:  # the directory itself moved or went
            if mask & (inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF):
                return QsfEvent(c.QSF_EV_ATTRIB, watched.path, 0, b"")
            return None
        if mask & inotify.IN_DELETE:
            return QsfEvent(c.QSF_EV_REMOVED, 0, watched.path, raw.name)
        if mask & inotify.IN_MOVED_FROM:
            return QsfEvent(c.QSF_EV_MOVED_FROM, 0, watched.path, raw.name)
        path = self._path_of(watched, raw.name)
        if mask & inotify.IN_CREATE:
            return QsfEvent(c.QSF_EV_CREATED, path, watched.path, raw.name)
        if mask & inotify.IN_MOVED_TO:
            return QsfEvent(c.QSF_EV_MOVED_TO, path, watched.path, raw.name)
        if not path:
            return None  # changed, then gone: its removal comes next
        if mask & (inotify.IN_MODIFY | inotify.IN_CLOSE_WRITE):
            return QsfEvent(c.QSF_EV_CHANGED, path, watched.path, raw.name)
        if mask & inotify.IN_ATTRIB:
            return QsfEvent(c.QSF_EV_ATTRIB, path, watched.path, raw.name)
        return None

    def _path_of(self, watched: _Watched, name: bytes) -> int:
        """qid.path of name in the watched directory (0 if it is gone)."""
        try:
            st = os.stat(name, dir_fd=watched.fd, follow_symlinks=False)
        except (OSError, ValueError):
            return 0
        return self._qids.path(st.st_dev, st.st_ino)
