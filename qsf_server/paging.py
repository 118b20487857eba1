"""One page of a directory snapshot for Treaddir and Tqsfreaddir."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Protocol, TypeVar

from qsf_p9.codec import RREAD_OVERHEAD

from . import fs


class _Named(Protocol):
    @property
    def name(self) -> bytes: ...


Entry = TypeVar("Entry", bound=_Named)


def page(snapshot: Sequence[Entry], offset: int, count: int, msize: int,
         overhead: int) -> tuple[Entry, ...]:
    """The entries from `offset` on that fit in `count` bytes and one reply of
    `msize` (each takes `overhead` + len(name)); EINVAL if not even one fits."""
    budget = max(0, min(count, msize - RREAD_OVERHEAD - 1))
    entries: list[Entry] = []
    index = min(offset, len(snapshot))
    while index < len(snapshot):
        size = overhead + len(snapshot[index].name)
        if size > budget:
            break
        budget -= size
        entries.append(snapshot[index])
        index += 1
    if not entries and index < len(snapshot):
        raise fs.error(errno.EINVAL, "count too small for the next entry")
    return tuple(entries)
