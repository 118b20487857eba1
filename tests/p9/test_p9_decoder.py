"""The Decoder's framing, errors, buffering and memory; encode's refusals."""

from __future__ import annotations

import array
import errno
import gc
import mmap
import struct
import sys
import time
import tracemalloc

import pytest

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_p9.codec import EOF, NEED_DATA, Decoder, encode
from qsf_p9.errors import FramingError, MessageError, ProtocolError

CLUNK = encode(7, m.Tclunk(3))


def frame(type_: int, tag: int, body: bytes) -> bytes:
    return struct.pack("<IBH", 7 + len(body), type_, tag) + body


def test_error_hierarchy() -> None:
    assert issubclass(FramingError, ProtocolError)
    assert issubclass(MessageError, ProtocolError)
    error = MessageError("x", tag=3, type=200, errno=errno.EOPNOTSUPP)
    assert (error.tag, error.type, error.errno) == (3, 200, errno.EOPNOTSUPP)


def test_need_data_then_eof() -> None:
    decoder = Decoder(replies=False)
    assert decoder.next_message() is NEED_DATA
    decoder.receive_data(CLUNK)
    decoder.receive_data(b"")
    assert decoder.next_message() == (7, m.Tclunk(3))
    assert decoder.next_message() is EOF
    assert decoder.next_message() is EOF
    with pytest.raises(RuntimeError):
        decoder.receive_data(b"x")


@pytest.mark.parametrize("cut", [1, 3, 4, 7, len(CLUNK) - 1])
def test_eof_inside_a_frame_is_a_framing_error(cut: int) -> None:
    decoder = Decoder(replies=False)
    decoder.receive_data(CLUNK + CLUNK[:cut])
    decoder.receive_data(b"")
    assert decoder.next_message() == (7, m.Tclunk(3))
    with pytest.raises(FramingError):
        decoder.next_message()


@pytest.mark.parametrize("size", [0, 1, 6])
def test_size_below_header_is_a_framing_error(size: int) -> None:
    decoder = Decoder(replies=False)
    decoder.receive_data(struct.pack("<I", size))
    with pytest.raises(FramingError):
        decoder.next_message()


def test_msize_is_settable_and_exact() -> None:
    decoder = Decoder(replies=False)
    decoder.msize = 4096
    fits = m.Twrite(1, 0, b"x" * (4096 - 23))
    decoder.receive_data(encode(1, fits))
    assert decoder.next_message() == (1, fits)
    decoder.receive_data(encode(2, m.Twrite(1, 0, b"x" * (4096 - 22)))[:4])
    with pytest.raises(FramingError, match="4097"):
        decoder.next_message()


# Types that are not 9P2000.L (Tlerror, Terror/Rerror, Topen, Tcreate, Tstat, Twstat)
# or not assigned at all.
@pytest.mark.parametrize("type_", [0, 6, 106, 107, 112, 114, 124, 126, 128, 255])
@pytest.mark.parametrize("replies", [False, True])
def test_unknown_types_are_unsupported_and_the_stream_goes_on(type_: int, replies: bool) -> None:
    decoder = Decoder(replies=replies)
    decoder.receive_data(frame(type_, 9, b"\x01\x02\x03") + encode(4, m.Rclunk()) + CLUNK)
    with pytest.raises(MessageError) as raised:
        decoder.next_message()
    assert (raised.value.tag, raised.value.type, raised.value.errno) == (9, type_, errno.EOPNOTSUPP)
    expected = (4, m.Rclunk()) if replies else (7, m.Tclunk(3))
    while True:  # skip the frame of the other direction
        try:
            assert decoder.next_message() == expected
            break
        except MessageError as error:
            assert error.errno == errno.EOPNOTSUPP


def test_wrong_direction_is_unsupported() -> None:
    server = Decoder(replies=False)
    server.receive_data(encode(5, m.Rlerror(2)))
    with pytest.raises(MessageError) as raised:
        server.next_message()
    assert (raised.value.tag, raised.value.errno) == (5, errno.EOPNOTSUPP)
    client = Decoder(replies=True)
    client.receive_data(CLUNK)
    with pytest.raises(MessageError) as raised:
        client.next_message()
    assert raised.value.errno == errno.EOPNOTSUPP


MALFORMED = [
    ("Tclunk too long", frame(c.TCLUNK, 3, b"\0" * 5)),
    ("Tclunk too short", frame(c.TCLUNK, 3, b"\0" * 3)),
    ("Twrite count above data", frame(c.TWRITE, 3, struct.pack("<IQI", 1, 0, 5) + b"abcd")),
    ("Twrite count below data", frame(c.TWRITE, 3, struct.pack("<IQI", 1, 0, 3) + b"abcd")),
    ("Twalk 17 names", frame(c.TWALK, 3, struct.pack("<IIH", 1, 2, 17) + b"\1\0a" * 17)),
    ("Twalk name past end", frame(c.TWALK, 3, struct.pack("<IIHH", 1, 2, 1, 9) + b"abc")),
    ("Tversion string past end", frame(c.TVERSION, 3, struct.pack("<IH", 8192, 9) + b"9P")),
    ("Tattach trailing byte", frame(c.TATTACH, 3, struct.pack("<IIHHI", 0, 0, 0, 0, 0) + b"!")),
    ("Tfsync half a datasync", frame(c.TFSYNC, 3, struct.pack("<IH", 1, 0))),
]


@pytest.mark.parametrize(("what", "bad"), MALFORMED, ids=[w for w, _ in MALFORMED])
def test_malformed_body_is_einval_and_the_stream_goes_on(what: str, bad: bytes) -> None:
    decoder = Decoder(replies=False)
    decoder.receive_data(bad + CLUNK)
    with pytest.raises(MessageError) as raised:
        decoder.next_message()
    assert (raised.value.tag, raised.value.errno) == (3, errno.EINVAL)
    assert decoder.next_message() == (7, m.Tclunk(3))


REPLY_MALFORMED = [
    ("Rreaddir partial entry", frame(c.TREADDIR + 1, 3, struct.pack("<I", 30) + b"\0" * 30)),
    ("Rreaddir count past end", frame(c.TREADDIR + 1, 3, struct.pack("<I", 30) + b"\0" * 25)),
    ("Rwalk 17 qids", frame(c.TWALK + 1, 3, struct.pack("<H", 17) + b"\0" * 13 * 17)),
    ("Rread count past end", frame(c.TREAD + 1, 3, struct.pack("<I", 10) + b"abc")),
    ("Rgetattr short", frame(c.TGETATTR + 1, 3, b"\0" * 152)),
    ("Rlerror long", frame(c.RLERROR, 3, b"\0" * 5)),
]


@pytest.mark.parametrize(("what", "bad"), REPLY_MALFORMED, ids=[w for w, _ in REPLY_MALFORMED])
def test_malformed_reply_is_einval(what: str, bad: bytes) -> None:
    decoder = Decoder(replies=True)
    decoder.receive_data(bad + encode(8, m.Rclunk()))
    with pytest.raises(MessageError) as raised:
        decoder.next_message()
    assert (raised.value.tag, raised.value.errno) == (3, errno.EINVAL)
    assert decoder.next_message() == (8, m.Rclunk())


def test_payload_is_a_view_of_the_received_bytes() -> None:
    received = encode(1, m.Twrite(1, 0, b"p" * 10000))
    decoder = Decoder(replies=False)
    decoder.receive_data(received)
    _, message = decoder.next_message()  # type: ignore[misc]
    assert isinstance(message, m.Twrite)
    assert isinstance(message.data, memoryview)
    assert message.data.obj is received  # no copy


def test_consumed_frames_are_released_when_the_message_is_dropped() -> None:
    received = encode(1, m.Twrite(1, 0, b"p" * 10000)) + encode(2, m.Twrite(1, 0, b"q" * 99))
    baseline = sys.getrefcount(received)
    decoder = Decoder(replies=False)
    decoder.receive_data(received)
    first = decoder.next_message()
    second = decoder.next_message()
    assert decoder.next_message() is NEED_DATA
    assert sys.getrefcount(received) > baseline
    del first, second
    gc.collect()
    assert sys.getrefcount(received) == baseline


def test_a_reused_receive_buffer_does_not_change_decoded_data() -> None:
    buffer = bytearray(encode(1, m.Twrite(1, 0, b"a" * 5000)))
    decoder = Decoder(replies=False)
    decoder.receive_data(memoryview(buffer))
    buffer[:] = b"\xff" * len(buffer)
    _, message = decoder.next_message()  # type: ignore[misc]
    assert isinstance(message, m.Twrite) and bytes(message.data) == b"a" * 5000


def _trickle(stream: bytes, piece: int) -> int:
    decoder = Decoder(replies=False)
    decoded = 0
    for start in range(0, len(stream), piece):
        decoder.receive_data(stream[start : start + piece])
        while decoder.next_message() is not NEED_DATA:
            decoded += 1
    return decoded


def test_byte_by_byte_is_linear_in_time_and_memory() -> None:
    stream = encode(1, m.Twrite(1, 0, b"w" * (256 * 1024 - 23)))
    tracemalloc.start()
    started = time.monotonic()
    try:
        assert _trickle(stream, 1) == 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Quadratic re-copying would take tens of minutes; a chunk object per byte ~50 MB.
    assert time.monotonic() - started < 30
    assert peak < 4 * len(stream)


def test_large_chunks_across_frames() -> None:
    frames = [encode(i, m.Twrite(1, i, bytes([i]) * (300_000 + i))) for i in range(12)]
    stream = b"".join(frames)
    started = time.monotonic()
    assert _trickle(stream, 1024 * 1024) == 12
    assert _trickle(stream, 4099) == 12
    assert time.monotonic() - started < 5


def test_frames_across_chunk_boundaries_copy_only_themselves() -> None:
    frame = encode(1, m.Tclunk(3))
    stream = frame * (2 * 1024 * 1024 // len(frame) + 1)
    chunks = [stream[i : i + 1024 * 1024] for i in range(0, len(stream), 1024 * 1024)]
    decoder = Decoder(replies=False)
    decoded = 0
    tracemalloc.start()
    try:
        for chunk in chunks:
            decoder.receive_data(chunk)
            while decoder.next_message() is not NEED_DATA:
                decoded += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded == len(stream) // len(frame)
    assert peak < 64 * 1024  # never a copy of a 1 MiB chunk


@pytest.mark.parametrize(
    "message",
    [m.Tclunk(-1), m.Tclunk(2**32), m.Tread(1, 2**64, 0), m.Rlerror(2**32), m.Rread(5),
     m.Tversion(-1, b"9P2000.L"), m.Tlock(1, 256, 0, 0, 0, 0, b""), m.Rstatfs(*[2**64] * 9),
     m.Rgetattr(*[0] * 20), m.Twrite(1, 0, "text")],  # type: ignore[arg-type]
    ids=repr,
)
def test_encode_refuses_what_does_not_fit(message: m.Message) -> None:
    with pytest.raises(ValueError):
        encode(1, message)


@pytest.mark.parametrize("tag", [-1, 0x10000])
def test_encode_refuses_bad_tags(tag: int) -> None:
    with pytest.raises(ValueError):
        encode(tag, m.Tclunk(1))
    with pytest.raises(ValueError):
        encode(tag, m.Tstatfs(1))


def test_messages_refuse_overlong_fields() -> None:
    with pytest.raises(ValueError):
        m.Twalk(1, 2, (b"a",) * 17)
    with pytest.raises(ValueError):
        m.Tlcreate(1, b"x" * 65536, 0, 0, 0)
    with pytest.raises(TypeError):
        m.Tmkdir(1, "name", 0, 0)  # type: ignore[arg-type]


def test_payload_counts_bytes_not_items() -> None:
    wide = memoryview(array.array("I", [1, 2, 3]))
    for message in (m.Rread(wide), m.Twrite(1, 0, wide)):
        frame = encode(2, message)
        assert frame.endswith(wide.tobytes())
        decoder = Decoder(replies=isinstance(message, m.Rread))
        decoder.receive_data(frame)
        _, got = decoder.next_message()  # type: ignore[misc]
        assert bytes(got.data) == wide.tobytes()  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        encode(1, m.Rread(memoryview(b"abcdef")[::2]))  # not contiguous


def test_encode_refuses_a_frame_above_4_gib() -> None:
    # 4 GiB of address space, never touched (MAP_NORESERVE: Linux's 0x4000 before 3.13).
    noreserve = getattr(mmap, "MAP_NORESERVE", 0x4000)
    huge = mmap.mmap(-1, 2**32, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | noreserve)
    try:
        view = memoryview(huge)
        with pytest.raises(ValueError):
            encode(1, m.Rread(view))
        with pytest.raises(ValueError):
            encode(1, m.Twrite(1, 0, view))
        view.release()
    finally:
        huge.close()
