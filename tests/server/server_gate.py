"""A file system backend whose reads and fsyncs (and writes, if asked) wait for the
test: slow I/O on demand."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import trio

from qsf_server.fs import Export


class GatedExport(Export):
    """Reads and fsyncs wait (in their worker thread) until `gate` is set; writes
    too with gate_writes."""

    def __init__(self, path: Path, *, gate_writes: bool = False) -> None:
        super().__init__(str(path))
        self.gate_writes = gate_writes
        self.gate = threading.Event()
        self.waiting = 0
        self._lock = threading.Lock()

    def _wait(self) -> None:
        with self._lock:
            self.waiting += 1
        assert self.gate.wait(30), "test never opened the gate"

    def read_cached(self, open_fd: int, count: int, offset: int) -> memoryview | None:
        return None  # every read goes to a worker thread, where it waits

    def read(self, open_fd: int, count: int, offset: int) -> bytes:
        self._wait()
        return super().read(open_fd, count, offset)

    def write(self, open_fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        if self.gate_writes:
            self._wait()
        return super().write(open_fd, data, offset)

    def sync(self, open_fd: int, data_only: bool) -> None:
        self._wait()
        super().sync(open_fd, data_only)


async def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)
