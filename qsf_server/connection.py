"""One 9P2000.L connection: the reader, a task per waiting request, one writer.

The reader feeds the qsf_p9 Decoder. Requests whose handler never waits
(walk, getattr, clunk, open, create...) are answered on the spot; requests
that wait for a worker thread (read, write, readdir, fsync) and Tflush each
run as a task in its own cancel scope, so that Tflush can abandon them. At
most `max_in_flight` such tasks run at once (`max_bulk` of them carrying
bulk data); when full, the reader stops reading, which pushes back on the
client. Replies of tasks go through a bounded channel to a single writer
task, which joins whatever has gathered into one write, so frames never
interleave. Replies given on the spot gather in the reader; once it has no
more input it writes them itself when the writer is idle (no wake-up of the
writer), else hands them to the channel, and always before it starts another
task: a reply is either in the channel (or written) before its Rflush or never
sent. Tversion
abandons every request, waits for them to end and starts a new session. A
framing error closes the connection; a bad message gets Rlerror.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

import trio

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_p9.codec import EOF, NEED_DATA, Decoder, encode
from qsf_p9.errors import FramingError, MessageError
from qsf_p9.messages import Message

from .fs import Export
from .session import DEFAULT_MAX_BUFFERED, DEFAULT_MAX_FIDS, Session

log = logging.getLogger("qsf_server")

DEFAULT_MAX_IN_FLIGHT: Final = 256
DEFAULT_MAX_BULK: Final = 32
RECEIVE_CHUNK: Final = 256 * 1024
# Replies gathered into one write: up to this many bytes (a larger frame goes alone).
_WRITE_BATCH_BYTES: Final = 256 * 1024
_BULK: Final = (m.Tread, m.Twrite, m.Treaddir, m.Tqsfreaddir)
# Requests that may wait (worker threads, Tflush, the Tqsfwatch long poll): each
# runs as its own task.
_OWN_TASK: Final = (m.Tread, m.Twrite, m.Treaddir, m.Tfsync, m.Tflush, m.Tqsfreaddir,
                    m.Tqsfwatch)


class Ending(Enum):
    """Why a connection ended."""

    EOF = "the client closed the stream"
    FRAMING = "a framing error (the stream is unusable)"
    BROKEN = "the stream broke"


@dataclass(eq=False, slots=True)
class _InFlight:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    long_poll: bool = False  # answered only when something happens (Tqsfwatch)


class Connection:
    """Serves an export over one byte stream (a receive half and a send half)."""

    def __init__(self, receive: trio.abc.ReceiveStream, send: trio.abc.SendStream,
                 export: Export, *, read_only: bool = False, msize: int = c.MAX_MSIZE,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, max_bulk: int = DEFAULT_MAX_BULK,
                 max_fids: int = DEFAULT_MAX_FIDS,
                 max_buffered: int = DEFAULT_MAX_BUFFERED, extensions: bool = True) -> None:
        if not c.MIN_MSIZE <= msize <= c.MAX_MSIZE:
            raise ValueError(f"msize must be within {c.MIN_MSIZE}..{c.MAX_MSIZE}")
        self._receive = receive
        self._send = send
        self.export = export
        self.read_only = read_only
        self.max_msize = msize
        self.max_fids = max_fids
        self.max_buffered = max_buffered
        self.extensions = extensions
        self.session: Session | None = None
        self._decoder = Decoder(replies=False, msize=msize)
        self._in_flight: dict[int, _InFlight] = {}
        self._slots = trio.Semaphore(max_in_flight)
        self._bulk_slots = trio.Semaphore(max_bulk)
        # Bounded in frames, each below msize: with the bulk limit this bounds the
        # reply bytes held when the client reads slowly.
        self._replies, self._reply_queue = trio.open_memory_channel[bytes](max_bulk)
        self._max_bulk = max_bulk
        # Replies the reader gave on the spot, not yet written or handed on.
        self._ready: list[bytes] = []
        # The rest of a direct write the pipe did not take: the writer sends it first.
        self._carry = b""
        self._writing = False  # the writer holds frames it has not written yet
        self._send_fd = _fd_of(send)
        self._receive_fd = _fd_of(receive)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def serve(self) -> Ending:
        """Serve until EOF, a framing error or a broken stream, then close the stream."""
        ending = Ending.BROKEN
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, nursery.cancel_scope)
                async with self._replies:
                    ending = await self._read_sessions()
        finally:
            if self.session is not None:
                self.session.close()
                self.session = None
            with trio.CancelScope(shield=True):
                await self._send.aclose()
                await self._receive.aclose()
        return ending

    # -- reading -----------------------------------------------------------

    async def _read_sessions(self) -> Ending:
        while True:
            async with trio.open_nursery() as requests:
                outcome = await self._read_requests(requests)
                if outcome is not Ending.EOF:
                    # Tversion, or the stream is gone: abandon every request unanswered.
                    requests.cancel_scope.cancel()
                else:
                    # The client is gone: what it asked goes on to its end (writes
                    # land), but a long poll would wait for ever.
                    for entry in self._in_flight.values():
                        if entry.long_poll:
                            entry.scope.cancel()
            if isinstance(outcome, Ending):
                return outcome
            tag, version = outcome
            await self._queue(self._new_session(version), tag)

    async def _read_requests(self, requests: trio.Nursery) -> Ending | tuple[int, m.Tversion]:
        try:
            return await self._read_until_version(requests)
        finally:
            await self._hand_on()  # before a new session's Rversion; dropped if cancelled

    async def _read_until_version(
        self, requests: trio.Nursery
    ) -> Ending | tuple[int, m.Tversion]:
        decoder = self._decoder
        while True:
            try:
                item = decoder.next_message()
            except MessageError as bad:
                await self._answer(m.Rlerror(bad.errno), bad.tag)
                continue
            except FramingError as bad:
                log.warning("closing the connection: %s", bad)
                return Ending.FRAMING
            if item is NEED_DATA:
                try:
                    data = await self._receive_data()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return Ending.BROKEN
                decoder.receive_data(data)
                continue
            if item is EOF:
                return Ending.EOF
            tag, message = item
            if isinstance(message, m.Tversion):
                return tag, message
            if self.session is None:
                await self._answer(m.Rlerror(errno.EPROTO), tag)
                continue
            if tag in self._in_flight:
                await self._answer(m.Rlerror(errno.EBUSY), tag)
                continue
            if isinstance(message, m.Tread):
                # Cached data is answered on the spot; a read from the disk gets a task.
                reply = self.session.read_now(message)
                if reply is not None:
                    await self._answer(reply, tag)
                    continue
            if isinstance(message, _OWN_TASK):
                # What was answered on the spot goes first (before any Rflush).
                await self._hand_on()
                await self._start(requests, tag, message)
            else:
                # Answered on the spot: these handlers never wait, so a task and a
                # cancel scope would only cost time, and no Tflush can find them
                # unanswered. Their replies leave together at the next read.
                await self._answer(await self.session.handle(message), tag)

    async def _receive_data(self) -> bytes | bytearray:
        if self._receive_fd is None:
            await self._hand_on()
            return await self._receive.receive_some(RECEIVE_CHUNK)
        # On a descriptor, read it directly (FdStream's checkpoints cost passes
        # of the event loop), and write what was answered before waiting.
        while True:
            try:
                return os.read(self._receive_fd, RECEIVE_CHUNK)
            except BlockingIOError:
                await self._write_ready()
                await trio.lowlevel.wait_readable(self._receive_fd)

    async def _answer(self, reply: Message, tag: int) -> None:
        """Keep a reply given on the spot; hand them on when many have gathered."""
        self._ready.append(self._frame(reply, tag))
        if len(self._ready) >= self._max_bulk:
            await self._hand_on()

    async def _hand_on(self) -> None:
        """Give the replies answered on the spot to the writer, in order."""
        while self._ready:
            frame = self._ready.pop(0)
            try:
                self._replies.send_nowait(frame)
            except trio.WouldBlock:
                await self._replies.send(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._ready.clear()  # the writer is gone: nobody reads them
                return

    async def _write_ready(self) -> None:
        """Write the gathered replies now if the writer is idle, else hand them on."""
        if not self._ready:
            return
        idle = (self._send_fd is not None and not self._writing and not self._carry
                and self._replies.statistics().current_buffer_used == 0)
        if not idle:
            await self._hand_on()
            return
        frames, self._ready = self._ready, []
        total = sum(map(len, frames))
        try:
            written = os.writev(self._send_fd, frames)  # type: ignore[arg-type]
        except BlockingIOError:
            written = 0
        except OSError:
            written = total  # the client is gone; the writer finds out too
        if written < total:
            # Frames must not interleave: the writer sends the rest before anything.
            self._carry = b"".join(frames)[written:]
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError,
                                     trio.ClosedResourceError):
                self._replies.send_nowait(b"")  # wakes the writer (the channel is empty)

    async def _start(self, requests: trio.Nursery, tag: int, message: Message) -> None:
        await _acquire(self._slots)
        bulk = isinstance(message, _BULK)
        if bulk:
            try:
                await _acquire(self._bulk_slots)
            except BaseException:
                self._slots.release()
                raise
        entry = _InFlight(long_poll=isinstance(message, m.Tqsfwatch))
        self._in_flight[tag] = entry
        requests.start_soon(self._run, tag, message, entry, bulk)

    # -- requests ----------------------------------------------------------

    async def _run(self, tag: int, message: Message, entry: _InFlight, bulk: bool) -> None:
        try:
            with entry.scope:
                if isinstance(message, m.Tflush):
                    reply: Message = await self._flush(tag, message.oldtag)
                else:
                    assert self.session is not None
                    reply = await self.session.handle(message)
                # A worker thread finishes even when flushed: then no reply, ever.
                await trio.lowlevel.checkpoint_if_cancelled()
                # The client may reuse the tag as soon as it reads the reply, maybe
                # before this task runs again: free it first. A Tflush arriving now
                # finds nothing to wait for, and its Rflush queues behind this reply.
                self._release(tag, entry)
                await self._queue(reply, tag)
        finally:
            self._release(tag, entry)
            entry.done.set()
            self._slots.release()
            if bulk:
                self._bulk_slots.release()

    def _release(self, tag: int, entry: _InFlight) -> None:
        if self._in_flight.get(tag) is entry:
            del self._in_flight[tag]

    async def _flush(self, tag: int, oldtag: int) -> Message:
        target = self._in_flight.get(oldtag) if oldtag != tag else None
        if target is not None:
            target.scope.cancel()
            # Rflush only once the old request replied or was abandoned.
            await target.done.wait()
        return m.Rflush()

    def _new_session(self, request: m.Tversion) -> Message:
        if self.session is not None:
            self.session.close()
            self.session = None
        msize = min(request.msize, self.max_msize)
        if request.version not in (c.VERSION_9P2000L, c.VERSION_QSF) or msize < c.MIN_MSIZE:
            return m.Rversion(msize, b"unknown")
        # Only a client that asks for the qsf extensions (qsf-fuse) gets them; the
        # kernel asks for plain 9P2000.L and never sees them.
        qsf = request.version == c.VERSION_QSF and self.extensions
        self.session = Session(self.export, msize=msize, read_only=self.read_only,
                               max_fids=self.max_fids, max_buffered=self.max_buffered,
                               qsf=qsf)
        self._decoder.msize = msize
        return m.Rversion(msize, c.VERSION_QSF if qsf else c.VERSION_9P2000L)

    # -- writing -----------------------------------------------------------

    def _frame(self, reply: Message, tag: int) -> bytes:
        msize = self.session.msize if self.session is not None else self.max_msize
        try:
            frame = encode(tag, reply)
        except ValueError:
            log.exception("cannot encode %s", type(reply).__name__)
            frame = encode(tag, m.Rlerror(errno.EIO))
        if len(frame) >= msize and not isinstance(reply, m.Rversion):
            log.error("%s of %d bytes does not fit msize %d", type(reply).__name__,
                      len(frame), msize)
            frame = encode(tag, m.Rlerror(errno.EMSGSIZE))
        return frame

    async def _queue(self, reply: Message, tag: int) -> None:
        frame = self._frame(reply, tag)
        try:
            self._replies.send_nowait(frame)  # no checkpoint: replies gather for one write
        except trio.WouldBlock:
            await self._replies.send(frame)

    async def _writer(self, connection_scope: trio.CancelScope) -> None:
        async with self._reply_queue:
            try:
                async for frame in self._reply_queue:
                    self._writing = True
                    frames = [self._carry, frame] if self._carry else [frame]
                    self._carry = b""
                    size = sum(map(len, frames))
                    while size < _WRITE_BATCH_BYTES:
                        try:
                            frame = self._reply_queue.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        frames.append(frame)
                        size += len(frame)
                    if size:
                        await self._send.send_all(frames[0] if len(frames) == 1
                                                  else b"".join(frames))
                    self._writing = False
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.info("the client stopped reading; closing the connection")
                connection_scope.cancel()


def _fd_of(stream: object) -> int | None:
    """The descriptor under a stream, for direct reads and writes (None: use the stream)."""
    return stream.fileno() if isinstance(stream, trio.lowlevel.FdStream) else None


async def _acquire(slots: trio.Semaphore) -> None:
    """Take a slot, yielding to the scheduler only when none is free.

    The reader then starts every request already received in one go, so that
    their replies leave in one write instead of one write (and one wake-up of
    the client) per request.
    """
    try:
        slots.acquire_nowait()
    except trio.WouldBlock:
        await slots.acquire()
