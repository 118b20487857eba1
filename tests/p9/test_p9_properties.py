"""Property tests of the codec: every message, fast vs spec, streams, hostile bytes."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from p9_wire import (
    ALL_CLASSES,
    HOT_CLASSES,
    is_reply,
    message_strategy,
    mutated,
    plain,
    reference_body,
    reference_frame,
    replies,
    requests,
    tags,
)

from qsf_p9 import fast, spec
from qsf_p9.codec import EOF, NEED_DATA, Decoder, encode
from qsf_p9.errors import FramingError, MessageError
from qsf_p9.messages import Message

_HEADER = struct.Struct("<IBH")
# Tests run once per message class take a quarter of the profile's examples each.
per_class = settings(max_examples=max(20, settings.default.max_examples // 4))


def _name(cls: type[Message]) -> str:
    return cls.__name__


def decode_all(stream: bytes, chunks: list[int], *, replies: bool) -> list[tuple[int, Message]]:
    """Feed `stream` cut into pieces of the given sizes (the rest at once), then EOF."""
    decoder = Decoder(replies=replies)
    out = []
    pos = 0
    sizes = iter(chunks)
    while True:
        result = decoder.next_message()
        if result is EOF:
            return out
        if result is NEED_DATA:
            size = next(sizes, len(stream))
            decoder.receive_data(stream[pos : pos + size])
            pos += size
            continue
        assert isinstance(result, tuple)
        out.append(result)


def test_every_message_type_has_a_strategy() -> None:
    assert len(ALL_CLASSES) == 61
    assert set(ALL_CLASSES) == set(spec.BODIES)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=_name)
@given(data=st.data())
@per_class
def test_round_trip(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(message_strategy(cls))
    tag = data.draw(tags)
    frame = encode(tag, message)
    # The wire format is the reference's, not only the codec's own.
    assert frame == reference_frame(tag, message)
    assert plain(spec.decode_body(cls, reference_body(message))) == plain(message)
    decoder = Decoder(replies=is_reply(cls))
    decoder.receive_data(frame)
    got_tag, got = decoder.next_message()  # type: ignore[misc]
    assert got_tag == tag
    assert type(got) is cls
    # repr also tells a Qid or Dirent from a plain tuple
    assert repr(plain(got)) == repr(plain(message))
    assert decoder.next_message() is NEED_DATA
    assert decoder.buffered == 0


@pytest.mark.parametrize("cls", HOT_CLASSES, ids=_name)
@given(data=st.data())
@per_class
def test_fast_equals_spec(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(message_strategy(cls))
    tag = data.draw(tags)
    fast_frame = fast.ENCODERS[cls](tag, message)
    body = spec.encode_body(message)
    assert fast_frame == _HEADER.pack(7 + len(body), cls.TYPE, tag) + body
    view = memoryview(fast_frame)[7:]
    from_fast = fast.DECODERS[cls.TYPE](view)
    from_spec = spec.decode_body(cls, view)
    assert repr(plain(from_fast)) == repr(plain(from_spec)) == repr(plain(message))


def _outcome(decode: object, body: bytes) -> object:
    try:
        return plain(decode(memoryview(body)))  # type: ignore[operator]
    except (ValueError, TypeError):
        return "rejected"


@pytest.mark.parametrize("cls", HOT_CLASSES, ids=_name)
@given(data=st.data())
@per_class
def test_fast_and_spec_accept_and_reject_alike(cls: type[Message], data: st.DataObject) -> None:
    valid = spec.encode_body(data.draw(message_strategy(cls)))
    body = data.draw(mutated(valid) | st.binary(max_size=200))
    from_fast = _outcome(fast.DECODERS[cls.TYPE], body)
    from_spec = _outcome(lambda view: spec.decode_body(cls, view), body)
    assert from_fast == from_spec


def _stream_case(direction: st.SearchStrategy[Message]) -> st.SearchStrategy[object]:
    return st.tuples(
        st.lists(st.tuples(tags, direction), min_size=1, max_size=6),
        st.lists(st.integers(1, 5000), max_size=40),
    )


@pytest.mark.parametrize("reply_side", [False, True], ids=["requests", "replies"])
@given(data=st.data())
def test_stream_in_any_pieces(reply_side: bool, data: st.DataObject) -> None:
    items, chunks = data.draw(_stream_case(replies if reply_side else requests))
    stream = b"".join(encode(tag, message) for tag, message in items)
    expected = [(tag, plain(message)) for tag, message in items]
    for pieces in (chunks, [1] * len(stream)):
        got = decode_all(stream, pieces, replies=reply_side)
        assert [(tag, plain(message)) for tag, message in got] == expected


def drive(decoder: Decoder, stream: bytes, chunks: list[int]) -> None:
    """Feed hostile bytes; only messages and protocol errors may come out."""
    pos = 0
    sizes = iter(chunks)
    while True:
        try:
            result = decoder.next_message()
        except MessageError as error:
            assert error.errno in (errno.EINVAL, errno.EOPNOTSUPP)
            continue
        except FramingError:
            return
        if result is EOF:
            return
        if result is NEED_DATA:
            size = next(sizes, len(stream))
            decoder.receive_data(stream[pos : pos + size])
            pos += size
            continue
        assert isinstance(result, tuple)
        _, message = result
        assert is_reply(type(message)) == decoder.replies


@given(
    stream=st.binary(max_size=3000),
    reply_side=st.booleans(),
    chunks=st.lists(st.integers(1, 600), max_size=20),
)
def test_arbitrary_bytes_give_only_messages_or_protocol_errors(
    stream: bytes, reply_side: bool, chunks: list[int]
) -> None:
    drive(Decoder(replies=reply_side, msize=8192), stream, chunks)


@given(data=st.data())
def test_mutated_frames_give_only_messages_or_protocol_errors(data: st.DataObject) -> None:
    reply_side = data.draw(st.booleans())
    items = data.draw(st.lists(st.tuples(tags, replies if reply_side else requests), max_size=4))
    stream = b"".join(encode(tag, message) for tag, message in items)
    damaged = data.draw(mutated(stream))
    chunks = data.draw(st.lists(st.integers(1, 600), max_size=20))
    drive(Decoder(replies=reply_side), damaged, chunks)


@given(
    msize=st.sampled_from([4096, 8192, 65536, 1024 * 1024]),
    excess=st.integers(1, 2**31),
    extra=st.integers(0, 4000),
    reply_side=st.booleans(),
)
def test_oversized_frame_fails_before_its_body_is_buffered(
    msize: int, excess: int, extra: int, reply_side: bool
) -> None:
    size = min(msize + excess, 0xFFFFFFFF)
    decoder = Decoder(replies=reply_side, msize=msize)
    decoder.receive_data(struct.pack("<I", size))
    decoder.receive_data(b"\x75" * extra)  # some of the body: far less than msize
    with pytest.raises(FramingError):
        decoder.next_message()
    assert decoder.buffered < msize
    with pytest.raises(FramingError):  # the stream stays unusable
        decoder.next_message()
