"""An async 9P2000.L client on trio: many requests in flight over one byte stream.

One reader task decodes replies and hands each to the call waiting on its tag;
one writer task sends the frames the calls queue. Every reply is checked
against its request before the caller sees it (see `_check_reply`): the
server is another qube and its bytes are hostile. A reply that is wrong for
its request fails that call with EIO; a stream that can no longer be parsed
(bad framing, a reply to a tag nobody asked on) breaks the connection.

`fail` is the one place that decides the connection is broken, whatever saw
it (the reader, the writer, an unanswered flush, the client closing): it logs
the reason once, fails every pending call with EIO (and every later one at
once), and cancels the reader and writer, which then close the channel so
that the server sees EOF. Nothing is sent or read on a broken connection.

A call that is cancelled or times out sends Tflush and keeps its tag reserved
until Rflush or the late reply arrives (reference/9p2000L.md, Tflush), so a
late reply can never be taken for the answer to a newer request. A server
that does not answer the Tflush either within the timeout is declared dead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

import trio

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_p9.codec import (
    DIRENT_OVERHEAD,
    EOF,
    NEED_DATA,
    QSF_DIRENT_OVERHEAD,
    QSF_EVENT_OVERHEAD,
    Decoder,
    encode,
)
from qsf_p9.errors import FramingError, MessageError

log = logging.getLogger(__name__)

DEFAULT_MSIZE: Final = c.MAX_MSIZE
DEFAULT_TIMEOUT: Final = 30.0
# The first reply may wait for the server to start (a qube to boot): at least this long.
HANDSHAKE_TIMEOUT: Final = 30.0
# Requests in flight at once; the server bounds its own side too.
MAX_IN_FLIGHT: Final = 256
# Largest extended attribute value or list we accept (Linux XATTR_SIZE_MAX).
XATTR_SIZE_MAX: Final = 65536
# Longest symlink target we accept (Linux PATH_MAX without the NUL).
TARGET_MAX: Final = 4095
_RECEIVE_CHUNK: Final = 256 * 1024
_SEND_QUEUE: Final = 64
_BATCH_BYTES: Final = 256 * 1024

ReplyT = TypeVar("ReplyT", bound=m.Message)


class P9Error(Exception):
    """A call failed; `errno` is the Linux errno to give the application."""

    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(errno_, message or errno.errorcode.get(errno_, str(errno_)))
        self.errno = errno_


class ConnectionLost(P9Error):
    """The connection to the server is gone (EIO)."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EIO, f"connection lost: {reason}")
        self.reason = reason


class BadReply(P9Error):
    """The server answered a call with a reply that is wrong for it (EIO)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, f"bad reply: {message}")


class CallTimeout(P9Error):
    """The server did not answer within the timeout (ETIMEDOUT)."""

    def __init__(self, request: m.Message) -> None:
        super().__init__(errno.ETIMEDOUT, f"no reply to {type(request).__name__}")


@dataclass(eq=False)
class _Call:
    """One request in flight on a tag."""

    request: m.Message
    done: trio.Event = field(default_factory=trio.Event)
    reply: m.Message | None = None
    failure: P9Error | None = None
    # Set once the caller gave up: a reply then only frees the tag.
    abandoned: bool = False
    # Set while a Tflush for this tag waits for its answer.
    flush_done: trio.Event | None = None


def _check_reply(request: m.Message, reply: m.Message, msize: int) -> m.Message:
    """The reply if it is a valid answer to request; raises P9Error/BadReply otherwise."""
    if isinstance(reply, m.Rlerror):
        # Only an errno Linux defines (1..133): the kernel refuses a FUSE reply with
        # an error of 512 or more, and the caller would wait for ever.
        if reply.ecode not in errno.errorcode:
            raise BadReply(f"Rlerror with errno {reply.ecode}")
        raise P9Error(reply.ecode)
    expected = m.REPLY_TO[type(request)]
    if type(reply) is not expected:
        raise BadReply(f"{type(reply).__name__} to {type(request).__name__}")
    check = _CHECKS.get(expected)
    if check is not None:
        check(request, reply, msize)
    return reply


def _check_rversion(request: m.Message, reply: m.Message, msize: int) -> None:
    assert isinstance(request, m.Tversion) and isinstance(reply, m.Rversion)
    # Asked for the qsf extensions, a server may grant them or answer plain 9P2000.L.
    if reply.version not in (c.VERSION_9P2000L, request.version):
        raise P9Error(errno.EPROTONOSUPPORT, f"server speaks {reply.version!r}, not 9P2000.L")
    if not c.MIN_MSIZE <= reply.msize <= request.msize:
        raise BadReply(f"msize {reply.msize} outside {c.MIN_MSIZE}..{request.msize}")


def _check_rwalk(request: m.Message, reply: m.Message, msize: int) -> None:
    assert isinstance(request, m.Twalk) and isinstance(reply, m.Rwalk)
    if len(reply.wqids) > len(request.wnames):
        raise BadReply(f"{len(reply.wqids)} qids for {len(request.wnames)} names")
    if request.wnames and not reply.wqids:
        raise BadReply("Rwalk without qids (the first name must fail with Rlerror)")


def _check_rread(request: m.Message, reply: m.Message, msize: int) -> None:
    assert isinstance(request, m.Tread) and isinstance(reply, m.Rread)
    if len(reply.data) > request.count:
        raise BadReply(f"Rread of {len(reply.data)} bytes for {request.count} asked")


def _check_rwrite(request: m.Message, reply: m.Message, msize: int) -> None:
    assert isinstance(request, m.Twrite) and isinstance(reply, m.Rwrite)
    if reply.count > len(request.data):
        raise BadReply(f"Rwrite of {reply.count} bytes for {len(request.data)} sent")


def _check_rreaddir(request: m.Message, reply: m.Message, msize: int) -> None:
    assert isinstance(request, m.Treaddir) and isinstance(reply, m.Rreaddir)
    used = sum(DIRENT_OVERHEAD + len(entry.name) for entry in reply.entries)
    if used > request.count:
        raise BadReply(f"Rreaddir of {used} bytes for {request.count} asked")


def _check_rqsfreaddir(request: m.Message, reply: m.Message, msize: int) -> None:
    assert isinstance(request, m.Tqsfreaddir) and isinstance(reply, m.Rqsfreaddir)
    used = sum(QSF_DIRENT_OVERHEAD + len(entry.name) for entry in reply.entries)
    if used > request.count:
        raise BadReply(f"Rqsfreaddir of {used} bytes for {request.count} asked")


def _check_rqsfwatch(request: m.Message, reply: m.Message, msize: int) -> None:
    assert isinstance(request, m.Tqsfwatch) and isinstance(reply, m.Rqsfwatch)
    used = sum(QSF_EVENT_OVERHEAD + len(event.name) for event in reply.events)
    if used > request.count:
        raise BadReply(f"Rqsfwatch of {used} bytes for {request.count} asked")
    if not reply.events:
        raise BadReply("Rqsfwatch without events")
    for event in reply.events:
        if not 0 < event.kind <= c.QSF_EV_LAST:
            raise BadReply(f"Rqsfwatch event of unknown kind {event.kind}")


def _check_rxattrwalk(request: m.Message, reply: m.Message, msize: int) -> None:
    assert isinstance(reply, m.Rxattrwalk)
    if reply.size > XATTR_SIZE_MAX:
        raise P9Error(errno.E2BIG, f"extended attribute of {reply.size} bytes")


def _check_rreadlink(request: m.Message, reply: m.Message, msize: int) -> None:
    assert isinstance(reply, m.Rreadlink)
    if not reply.target or len(reply.target) > TARGET_MAX or b"\0" in reply.target:
        raise BadReply("symlink target empty, too long or with a NUL byte")


def _check_rgetattr(request: m.Message, reply: m.Message, msize: int) -> None:
    assert isinstance(reply, m.Rgetattr)
    for nsec in (reply.atime_nsec, reply.mtime_nsec, reply.ctime_nsec):
        if nsec >= 1_000_000_000:
            raise BadReply(f"Rgetattr with {nsec} nanoseconds")


_CHECKS = {
    m.Rversion: _check_rversion,
    m.Rwalk: _check_rwalk,
    m.Rread: _check_rread,
    m.Rwrite: _check_rwrite,
    m.Rreaddir: _check_rreaddir,
    m.Rxattrwalk: _check_rxattrwalk,
    m.Rreadlink: _check_rreadlink,
    m.Rgetattr: _check_rgetattr,
    m.Rqsfreaddir: _check_rqsfreaddir,
    m.Rqsfwatch: _check_rqsfwatch,
}


class FidPool:
    """Fid numbers: handed out, given back only once the server forgot them."""

    def __init__(self, first: int = 1) -> None:
        self._next = first
        self._free: list[int] = []
        self._in_use: set[int] = set()

    def allocate(self) -> int:
        if self._free:
            fid = self._free.pop()
        elif self._next >= c.NOFID:
            raise P9Error(errno.EMFILE, "out of fid numbers")
        else:
            fid = self._next
            self._next += 1
        self._in_use.add(fid)
        return fid

    def release(self, fid: int) -> None:
        # Given back twice, a number would name two files at once: refuse.
        if fid not in self._in_use:
            log.error("fid %d released but not in use", fid)
            return
        self._in_use.remove(fid)
        self._free.append(fid)


def _fd_of(stream: object) -> int | None:
    """The descriptor under a stream, for direct reads and writes (None: use the stream)."""
    return stream.fileno() if isinstance(stream, trio.lowlevel.FdStream) else None


class P9Client:
    """A 9P2000.L connection. Create with `connect`, inside a nursery that outlives it."""

    def __init__(
        self,
        receive_stream: trio.abc.ReceiveStream,
        send_stream: trio.abc.SendStream,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._receive_stream = receive_stream
        self._send_stream = send_stream
        self.timeout = timeout if timeout > 0 else math.inf
        self.msize = c.MIN_MSIZE
        self._decoder = Decoder(replies=True, msize=c.MAX_MSIZE)
        self._calls: dict[int, _Call] = {}
        self._next_tag = 0
        self._slots = trio.Semaphore(MAX_IN_FLIGHT)
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[bytes](_SEND_QUEUE)
        # Frames in the outbox or being written by the writer: while there are
        # none, a frame is written at once by its caller (on a file descriptor).
        self._queued = 0
        self._send_fd = _fd_of(send_stream)
        self._receive_fd = _fd_of(receive_stream)
        self._failure: str | None = None
        self._nursery: trio.Nursery | None = None
        self.fids = FidPool()
        # Set once the reader and writer ended and the channel is closed.
        self.closed = trio.Event()
        self._tasks_scope = trio.CancelScope()
        # Set when the server stopped answering (rather than closing the channel).
        self.unresponsive = False
        self._idle = trio.Event()  # set whenever the last call in flight ends
        self.qsf = False  # the server granted the qsf extensions (negotiate)

    # -- life cycle --------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the tasks that serve the connection in `nursery`."""
        self._nursery = nursery
        nursery.start_soon(self._serve, name="9p-connection")

    @property
    def dead(self) -> bool:
        return self._failure is not None

    def fail(self, reason: str, *, quiet: bool = False) -> None:
        """Declare the connection broken: every pending and future call fails with EIO."""
        if self._failure is not None:
            return
        log.log(logging.INFO if quiet else logging.ERROR, "9P connection lost: %s", reason)
        self._failure = reason
        calls = list(self._calls.values())
        self._calls.clear()
        for call in calls:
            call.failure = ConnectionLost(reason)
            call.done.set()
            if call.flush_done is not None:
                call.flush_done.set()
        self._idle.set()
        # Callers waiting for room in the outbox get ClosedResourceError (EIO).
        self._outbox_send.close()
        self._tasks_scope.cancel()

    async def quiesce(self) -> None:
        """Wait until no request is in flight (or the connection is dead)."""
        while self._calls and self._failure is None:
            self._idle = trio.Event()
            await self._idle.wait()

    async def aclose(self) -> None:
        """Close the connection: the server sees EOF. Returns once the channel is closed."""
        self.fail("closed by the client", quiet=True)
        with trio.CancelScope(shield=True):
            if self._nursery is None:
                await self._close_streams()
            else:
                await self.closed.wait()

    # -- tasks -------------------------------------------------------------

    async def _serve(self) -> None:
        """Run the reader and the writer until the connection breaks, then close it."""
        try:
            with self._tasks_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader, name="9p-reader")
                    nursery.start_soon(self._writer, name="9p-writer")
        finally:
            # Ended by fail(), or cancelled from outside (the program ends).
            self.fail("the client stopped", quiet=True)
            with trio.CancelScope(shield=True):
                await self._close_streams()

    async def _close_streams(self) -> None:
        for stream in (self._send_stream, self._receive_stream):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await stream.aclose()
        self.closed.set()

    async def _writer(self) -> None:
        try:
            while True:
                frame = await self._outbox_receive.receive()
                # Frames queued meanwhile go in the same write: one wake-up of the
                # server for many requests.
                batch = [frame]
                size = len(frame)
                while size < _BATCH_BYTES:
                    try:
                        frame = self._outbox_receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch.append(frame)
                    size += len(frame)
                await self._send_stream.send_all(batch[0] if len(batch) == 1
                                                 else b"".join(batch))
                self._queued -= len(batch)
        except trio.EndOfChannel:
            return  # fail() closed the outbox: nothing more is sent
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            self.fail(f"cannot send: {error or type(error).__name__}")

    async def _reader(self) -> None:
        try:
            while True:
                data = await self._receive()
                if not data:
                    self.fail("the server closed the channel")
                    return
                self._decoder.receive_data(data)
                self._dispatch()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            self.fail(f"cannot receive: {error or type(error).__name__}")
        except FramingError as error:
            self.fail(f"framing error: {error}")
        except Exception as error:
            # A bug of ours on some reply: the mount must live on (EIO), the log says where.
            log.error("9P reader failed", exc_info=error)
            self.fail(f"internal error: {error!r}")

    async def _receive(self) -> bytes:
        if self._receive_fd is None:
            return bytes(await self._receive_stream.receive_some(_RECEIVE_CHUNK))
        # On a descriptor, read it directly: FdStream's checkpoints would cost
        # two more passes of the event loop per reply.
        while True:
            try:
                return os.read(self._receive_fd, _RECEIVE_CHUNK)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._receive_fd)

    def _post_nowait(self, frame: bytes) -> None:
        """Send frame, or queue it for the writer; trio.WouldBlock if the queue is full."""
        if self._failure is not None:
            # The descriptor may be closed already, and its number reused.
            raise trio.ClosedResourceError
        if self._send_fd is not None and not self._queued:
            # Nothing queued: written here, without waking the writer.
            try:
                written = os.write(self._send_fd, frame)
            except BlockingIOError:
                written = 0
            except OSError as error:
                self.fail(f"cannot send: {error}")
                raise trio.ClosedResourceError from None
            if written == len(frame):
                return
            frame = frame[written:]  # the queue is empty: the rest goes first
        self._queued += 1
        try:
            self._outbox_send.send_nowait(frame)
        except BaseException:
            self._queued -= 1
            raise

    async def _post(self, frame: bytes) -> None:
        try:
            self._post_nowait(frame)
        except trio.WouldBlock:
            self._queued += 1
            try:
                await self._outbox_send.send(frame)
            except BaseException:
                self._queued -= 1
                raise

    def _dispatch(self) -> None:
        """Hand every complete reply to its call."""
        while self._failure is None:
            try:
                item = self._decoder.next_message()
            except MessageError as error:
                self._deliver(error.tag, None, BadReply(f"malformed reply: {error}"))
                continue
            if item is NEED_DATA:
                return
            if item is EOF:
                self.fail("the server closed the channel")
                return
            tag, reply = item
            self._deliver(tag, reply, None)

    def _deliver(self, tag: int, reply: m.Message | None, failure: P9Error | None) -> None:
        call = self._calls.get(tag)
        if call is None or call.done.is_set():
            self.fail(f"reply on tag {tag} that no request is waiting on")
            return
        if call.abandoned:
            # A late reply to a flushed request: the tag stays taken until Rflush.
            self._after_abandoned(call, reply)
            call.done.set()
            return
        if failure is None and reply is not None:
            try:
                reply = _check_reply(call.request, reply, self.msize)
            except BadReply as error:
                log.warning("tag %d: %s", tag, error)
                failure = error
            except P9Error as error:
                failure = error
        call.reply = reply if failure is None else None
        call.failure = failure
        del self._calls[tag]
        call.done.set()
        if not self._calls:
            self._idle.set()

    def _after_abandoned(self, call: _Call, reply: m.Message | None) -> None:
        """A request the caller gave up on got its reply: undo what it created."""
        request = call.request
        try:
            created = _created_fid(request, reply)
        except P9Error:
            created = None
        if created is not None and self._nursery is not None:
            self._nursery.start_soon(self._clunk_quietly, created)
        elif isinstance(request, m.Twalk | m.Txattrwalk) and request.newfid != request.fid:
            self.fids.release(request.newfid)

    async def _clunk_quietly(self, fid: int) -> None:
        with contextlib.suppress(P9Error):
            await self.clunk(fid)

    # -- calls -------------------------------------------------------------

    def _allocate_tag(self) -> int:
        # At most MAX_IN_FLIGHT + flushes are taken out of 0xFFFF: this ends.
        while True:
            tag = self._next_tag
            self._next_tag = (tag + 1) % c.NOTAG
            if tag not in self._calls:
                return tag

    async def call(self, request: m.Message, reply_type: type[ReplyT]) -> ReplyT:
        """Send request and return its checked reply; raises P9Error."""
        if self._failure is not None:
            raise ConnectionLost(self._failure)
        # Without a wait when a slot is free: every yield costs a pass of the event loop.
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            call = await self._exchange(request)
        finally:
            self._slots.release()
        if call.failure is not None:
            raise call.failure
        assert isinstance(call.reply, reply_type)
        return call.reply

    async def _exchange(self, request: m.Message) -> _Call:
        """Send request on a new tag and wait for its reply (or failure) within the timeout."""
        if self._failure is not None:
            raise ConnectionLost(self._failure)
        # Tversion goes on NOTAG (it resets the session; nothing else is in flight).
        tag = c.NOTAG if isinstance(request, m.Tversion) else self._allocate_tag()
        frame = encode(tag, request)
        if len(frame) > self.msize and not isinstance(request, m.Tversion):
            raise P9Error(errno.EINVAL, f"{type(request).__name__} larger than msize")
        call = _Call(request)
        self._calls[tag] = call
        sent = False
        try:
            with trio.move_on_after(self.timeout):
                await self._post(frame)
                sent = True
                await call.done.wait()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ConnectionLost(self._failure or "the writer stopped") from None
        finally:
            if not call.done.is_set():
                self._abandon(tag, call, sent)
        if not call.done.is_set():
            raise CallTimeout(request)
        return call

    async def call_chain(self, requests: Sequence[m.Message]) -> list[m.Message | P9Error]:
        """Send requests back to back, then wait for every reply: one round trip.

        Returns each request's checked reply or its P9Error, in order. A
        request may use a fid that an earlier one creates or turns into
        something else: a server that answers in order (qsf-server, Linux's
        v9fs peers) runs it on the result; one that does not answers it for
        the fid as it was, so the caller checks. Raises ConnectionLost only if
        the connection is gone before anything was sent.
        """
        if self._failure is not None:
            raise ConnectionLost(self._failure)
        posted: list[tuple[int, _Call]] = []
        sent: set[int] = set()
        taken = 0
        try:
            for request in requests:
                try:
                    self._slots.acquire_nowait()
                except trio.WouldBlock:
                    await self._slots.acquire()
                taken += 1
                tag = self._allocate_tag()
                frame = encode(tag, request)
                if len(frame) > self.msize:
                    raise P9Error(errno.EINVAL, f"{type(request).__name__} larger than msize")
                call = _Call(request)
                self._calls[tag] = call
                posted.append((tag, call))
                await self._post(frame)
                sent.add(tag)
            deadline = trio.current_time() + self.timeout
            results: list[m.Message | P9Error] = []
            for _, call in posted:
                with trio.move_on_at(deadline):
                    await call.done.wait()
                if not call.done.is_set():
                    results.append(CallTimeout(call.request))
                elif call.failure is not None:
                    results.append(call.failure)
                else:
                    assert call.reply is not None
                    results.append(call.reply)
            return results
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ConnectionLost(self._failure or "the writer stopped") from None
        except BaseException:
            # The caller sees no result: undo what the requests create, now or when
            # their late replies come.
            for tag, call in posted:
                if not call.done.is_set():
                    if tag in sent and not call.abandoned:
                        self._abandon(tag, call, True)
                        continue
                    self._calls.pop(tag, None)
                    if not self._calls:
                        self._idle.set()
                self._after_abandoned(call, call.reply)
            for request in requests[len(posted):]:
                self._after_abandoned(_Call(request), None)
            raise
        finally:
            for tag, call in posted:
                if not call.done.is_set() and not call.abandoned:
                    self._abandon(tag, call, tag in sent)
            for _ in range(taken):
                self._slots.release()

    def _abandon(self, tag: int, call: _Call, sent: bool) -> None:
        """The caller stopped waiting (cancelled or timed out)."""
        if not sent or self._failure is not None:
            self._calls.pop(tag, None)
            if not self._calls:
                self._idle.set()
            return
        call.abandoned = True
        if isinstance(call.request, m.Tflush):
            # A flush that nobody answers: the server is not listening.
            self.unresponsive = True
            self.fail("the server does not answer Tflush")
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._flush, tag, call)

    async def _flush(self, oldtag: int, old: _Call) -> None:
        """Flush oldtag; free it on Rflush (its late reply, if any, came first)."""
        try:
            await self.call(m.Tflush(oldtag), m.Rflush)
        except CallTimeout:
            return  # the flush's own _abandon declared the connection dead
        except P9Error as error:
            if self._failure is None:
                self.fail(f"Tflush failed: {error}")
            return
        if self._calls.get(oldtag) is old:
            if not old.done.is_set():
                self._after_abandoned(old, None)
            del self._calls[oldtag]
            if not self._calls:
                self._idle.set()

    # -- typed helpers -----------------------------------------------------

    async def negotiate(self, msize: int, *, qsf: bool = False) -> int:
        """Tversion; returns the negotiated msize (also bounds replies from now on).

        With qsf, "9P2000.L.qsf1" is offered first (docs/PROTOCOL.md); a server
        that refuses it (Rlerror, or another version such as "unknown") is asked
        for plain 9P2000.L. `self.qsf` tells whether the extensions were granted.
        """
        msize = max(c.MIN_MSIZE, min(msize, c.MAX_MSIZE))
        self.qsf = False
        reply: m.Rversion | None = None
        # The handshake may wait longer than a request: a server qube starting.
        timeout, self.timeout = self.timeout, max(self.timeout, HANDSHAKE_TIMEOUT)
        try:
            if qsf:
                try:
                    reply = await self.call(m.Tversion(msize, c.VERSION_QSF), m.Rversion)
                except (ConnectionLost, BadReply, CallTimeout):
                    raise
                except P9Error:
                    reply = None  # refused: ask again for plain 9P2000.L
            if reply is None:
                reply = await self.call(m.Tversion(msize, c.VERSION_9P2000L), m.Rversion)
        finally:
            self.timeout = timeout
        self.qsf = reply.version == c.VERSION_QSF
        self.msize = reply.msize
        self._decoder.msize = reply.msize
        return reply.msize

    async def attach(self, uname: bytes, aname: bytes, n_uname: int) -> tuple[int, m.Qid]:
        fid = self.fids.allocate()
        try:
            reply = await self.call(m.Tattach(fid, c.NOFID, uname, aname, n_uname), m.Rattach)
        except BaseException:
            self.fids.release(fid)
            raise
        return fid, reply.qid

    async def walk(self, fid: int, names: Sequence[bytes]) -> tuple[int, m.Qid | None]:
        """Walk from fid to a new fid; returns it and the qid of the last name.

        An empty `names` clones fid (qid None). A walk that stops short fails
        with ENOENT, as Linux's client treats it.
        """
        newfid = self.fids.allocate()
        chunks = [tuple(names[i : i + c.MAXWELEM]) for i in range(0, len(names), c.MAXWELEM)]
        qid: m.Qid | None = None
        try:
            source = fid
            for chunk in chunks or [()]:
                reply = await self.call(m.Twalk(source, newfid, chunk), m.Rwalk)
                if len(reply.wqids) != len(chunk):
                    raise P9Error(errno.ENOENT)
                if reply.wqids:
                    qid = reply.wqids[-1]
                source = newfid
        except BaseException:
            if source == newfid:
                assert self._nursery is not None
                self._nursery.start_soon(self._clunk_quietly, newfid)
            elif not self._newfid_in_flight(newfid):
                self.fids.release(newfid)
            raise
        return newfid, qid

    def _newfid_in_flight(self, newfid: int) -> bool:
        """Whether an abandoned request still decides newfid's fate."""
        return any(
            call.abandoned and getattr(call.request, "newfid", None) == newfid
            for call in self._calls.values()
        )

    async def clunk(self, fid: int) -> None:
        """Forget fid. Its number is reused only once the server answered."""
        try:
            await self.call(m.Tclunk(fid), m.Rclunk)
        except P9Error as error:
            # Lost or timed out: the server may still hold it, never reuse the number.
            if not isinstance(error, ConnectionLost | CallTimeout):
                self.fids.release(fid)  # the server answered: the fid is gone
            raise
        self.fids.release(fid)

    async def remove(self, fid: int) -> None:
        """Tremove: the file goes, and so does fid, even when the remove fails."""
        try:
            await self.call(m.Tremove(fid), m.Rremove)
        except P9Error as error:
            if not isinstance(error, ConnectionLost | CallTimeout):
                self.fids.release(fid)
            raise
        self.fids.release(fid)

    async def xattrwalk(self, fid: int, name: bytes) -> tuple[int, int]:
        """Txattrwalk to a new fid; returns it and the size of the value (or list)."""
        newfid = self.fids.allocate()
        try:
            reply = await self.call(m.Txattrwalk(fid, newfid, name), m.Rxattrwalk)
        except BaseException:
            if not self._newfid_in_flight(newfid):
                self.fids.release(newfid)
            raise
        return newfid, reply.size


def _created_fid(request: m.Message, reply: m.Message | None) -> int | None:
    """The fid a successful reply created on the server, which needs a clunk."""
    if reply is None or isinstance(reply, m.Rlerror):
        return None
    if isinstance(request, m.Twalk) and isinstance(reply, m.Rwalk):
        if request.newfid != request.fid and len(reply.wqids) == len(request.wnames):
            return request.newfid
        return None
    if isinstance(request, m.Txattrwalk) and isinstance(reply, m.Rxattrwalk):
        return request.newfid
    if isinstance(request, m.Tattach) and isinstance(reply, m.Rattach):
        return request.fid
    return None
