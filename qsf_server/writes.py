"""Writes to files, gathered: one worker thread call for all the writes queued
while the previous call ran.

A pipelined client keeps many Twrites in flight; each used to pay its own
thread hop (tens of microseconds, more than a 64 KiB pwrite into the page
cache). The first write to arrive runs a batch in a thread; writes arriving
meanwhile wait and go in the next batch, in arrival order. Waiting is
shielded from cancellation, as a thread call is: the fid (and so its
descriptor) stays held until its write ran, and a flushed write still lands,
only its reply is dropped.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

Data = bytes | bytearray | memoryview
WriteFunction = Callable[[int, Data, int], int]


@dataclass(eq=False, slots=True)
class _Write:
    fd: int
    data: Data
    offset: int
    written: int = 0
    failure: Exception | None = None
    done: trio.Event = field(default_factory=trio.Event)


def _run(function: WriteFunction, batch: list[_Write]) -> None:
    """In a worker thread: each write on its own (one failing fails only itself)."""
    for write in batch:
        try:
            write.written = function(write.fd, write.data, write.offset)
        except Exception as failure:  # raised to its own request, which answers Rlerror
            write.failure = failure


class WriteBatcher:
    """Calls function(fd, data, offset) (a pwrite) for each write, in batches."""

    def __init__(self, function: WriteFunction) -> None:
        self._function = function
        self._queue: list[_Write] = []
        self._running = False
        self.batches = 0  # thread calls made (for tests)

    async def write(self, fd: int, data: Data, offset: int) -> int:
        """pwrite(fd, data, offset) in a worker thread; raises what it raised."""
        write = _Write(fd, data, offset)
        self._queue.append(write)
        with trio.CancelScope(shield=True):
            if self._running:
                await write.done.wait()
            else:
                await self._drain()
        if write.failure is not None:
            raise write.failure
        return write.written

    async def _drain(self) -> None:
        self._running = True
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await trio.to_thread.run_sync(_run, self._function, batch)
                finally:
                    self.batches += 1
                    for write in batch:
                        write.done.set()
        finally:
            self._running = False
            # Only if the thread call itself failed: nobody would run these now.
            for write in self._queue:
                write.failure = OSError(errno.EIO, "the write could not be started")
                write.done.set()
            self._queue.clear()
