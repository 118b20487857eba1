"""Fuzz target for qsf_p9's Decoder: hostile bytes in, only messages or protocol errors out.

Invariants checked on every input (an AssertionError or any other exception is
a bug):
- next_message returns (tag, message), NEED_DATA or EOF, or raises
  MessageError (EINVAL/EOPNOTSUPP, with the frame's own tag and type, the frame
  consumed) or FramingError (only for size < 7, size > msize, or a frame cut by
  EOF), and FramingError is final;
- a decoded message is of the decoder's direction, and encoding it again gives
  back exactly the bytes of its frame (the decoder accepts only canonical frames;
  the one tolerated exception is a Tfsync of only fid[4]).

Runs:
  python fuzz/p9_decoder.py -max_total_time=600 [CORPUS_DIR]   (atheris/libFuzzer)
  python fuzz/p9_decoder.py --random 200000 [--seed N]          (no atheris needed)
tests/p9/test_p9_fuzz.py runs a short fixed-seed --random run and, marked slow,
a long one.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import random
import struct
import sys
from collections.abc import Iterator

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_p9.codec import EOF, NEED_DATA, Decoder, encode
from qsf_p9.errors import FramingError, MessageError
from qsf_p9.messages import Dirent, Qid

MSIZES = (c.MIN_MSIZE, 8192, 65536 + 24, c.MAX_MSIZE)
_HEADER = struct.Struct("<IBH")


def _pieces(rng: random.Random, total: int) -> Iterator[int]:
    """Chunk sizes: single bytes, small and large pieces, mixed."""
    while True:
        kind = rng.random()
        if kind < 0.3:
            yield 1
        elif kind < 0.8:
            yield rng.randint(1, 64)
        else:
            yield rng.randint(1, max(1, total))


def check_stream(stream: bytes, *, replies: bool, msize: int, rng: random.Random) -> int:
    """Decode `stream` fed in random pieces, checking every invariant; the messages decoded."""
    decoder = Decoder(replies=replies, msize=msize)
    table = m.REPLIES if replies else m.REQUESTS
    pieces = _pieces(rng, len(stream))
    fed = consumed = decoded = 0
    while True:
        try:
            result = decoder.next_message()
        except MessageError as error:
            size, type_, tag = _HEADER.unpack_from(stream, consumed)
            assert (error.tag, error.type) == (tag, type_), error
            expected = errno.EINVAL if table.get(type_) else errno.EOPNOTSUPP
            assert error.errno == expected, error
            assert fed - decoder.buffered == consumed + size
            consumed += size
            continue
        except FramingError:
            _check_framing_error(stream[consumed:fed], msize, eof=fed == len(stream))
            for _ in range(2):
                final = False
                try:
                    decoder.next_message()
                except FramingError:
                    final = True
                assert final, "FramingError was not final"
            return decoded
        if result is EOF:
            assert consumed == len(stream) == fed
            return decoded
        if result is NEED_DATA:
            if fed == len(stream):
                decoder.receive_data(b"")
            else:
                piece = stream[fed : fed + next(pieces)]
                decoder.receive_data(piece)
                fed += len(piece)
            continue
        tag, message = result
        frame = stream[consumed : fed - decoder.buffered]
        consumed += len(frame)
        decoded += 1
        assert table.get(message.TYPE) is type(message)
        again = encode(tag, message)
        if isinstance(message, m.Tfsync) and len(frame) == 11:
            assert message.datasync == 0 and again[4:11] == frame[4:]
        else:
            assert again == frame, (message, frame.hex())


def _check_framing_error(rest: bytes, msize: int, *, eof: bool) -> None:
    if len(rest) >= 4:
        (size,) = struct.unpack_from("<I", rest)
        assert size < 7 or size > msize or (eof and len(rest) < size), (size, len(rest))
    else:
        assert eof and rest, rest


def one_input(data: bytes) -> None:
    """The libFuzzer entry: data[0] picks direction and msize, data[1:3] seeds the chunking."""
    if len(data) < 3:
        return
    rng = random.Random(data[1:3])
    check_stream(data[3:], replies=bool(data[0] & 1), msize=MSIZES[data[0] >> 1 & 3], rng=rng)


# ---- a self-contained random fuzzer (no atheris needed)


def _random_value(rng: random.Random, annotation: str) -> object:
    if annotation == "int":
        return rng.choice([0, 1, 7, 0xFF, rng.randint(0, 0xFF)])
    if annotation == "bytes":
        return rng.randbytes(rng.choice([0, 1, 3, rng.randint(0, 300)]))
    if annotation == "Buffer":
        return rng.randbytes(rng.choice([0, 5, rng.randint(0, 5000)]))
    if annotation == "Qid":
        return Qid(rng.randint(0, 0xFF), rng.randint(0, 0xFFFFFFFF), rng.getrandbits(64))
    if annotation == "tuple[bytes, ...]":
        return tuple(_random_value(rng, "bytes") for _ in range(rng.randint(0, 16)))
    if annotation == "tuple[Qid, ...]":
        return tuple(_random_value(rng, "Qid") for _ in range(rng.randint(0, 16)))
    if annotation == "tuple[Dirent, ...]":
        return tuple(
            Dirent(_random_value(rng, "Qid"), rng.getrandbits(64), rng.randint(0, 255),  # type: ignore[arg-type]
                   _random_value(rng, "bytes"))  # type: ignore[arg-type]
            for _ in range(rng.randint(0, 20))
        )
    if annotation == "Rgetattr":
        values = [_random_value(rng, "Qid") if f.name == "qid"
                  else rng.getrandbits(rng.choice([8, 32]))
                  for f in dataclasses.fields(m.Rgetattr)]
        return m.Rgetattr(*values)
    if annotation == "tuple[QsfDirent, ...]":
        return tuple(
            m.QsfDirent(_random_value(rng, "Qid"), rng.getrandbits(64), rng.randint(0, 255),  # type: ignore[arg-type]
                        _random_value(rng, "bytes"), rng.randint(0, 255),  # type: ignore[arg-type]
                        _random_value(rng, "Rgetattr"))  # type: ignore[arg-type]
            for _ in range(rng.randint(0, 8))
        )
    if annotation == "tuple[QsfEvent, ...]":
        return tuple(
            m.QsfEvent(rng.randint(0, 255), rng.getrandbits(64), rng.getrandbits(64),
                       _random_value(rng, "bytes"))  # type: ignore[arg-type]
            for _ in range(rng.randint(0, 20))
        )
    raise AssertionError(f"no generator for {annotation}")


def random_frame(rng: random.Random, replies: bool) -> bytes:
    """A valid frame of a random message of one direction."""
    cls = rng.choice(list((m.REPLIES if replies else m.REQUESTS).values()))
    values = {f.name: _random_value(rng, str(f.type)) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return encode(rng.randint(0, 0xFFFF), cls(**values))


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(out))
        op = rng.randrange(6)
        if op == 0:
            del out[at:]
        elif op == 1:
            out[at : at + 1] = bytes([rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randint(0, 255)])])
        elif op == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del out[at : at + rng.randint(1, 8)]
        elif op == 4 and len(out) >= at + 4:  # a size or count field: off by a little
            (value,) = struct.unpack_from("<I", out, at)
            struct.pack_into("<I", out, at, (value + rng.choice([-2, -1, 1, 2, 13])) % 2**32)
        else:
            out += rng.randbytes(rng.randint(1, 16))
    return bytes(out)


def random_run(iterations: int, seed: int) -> tuple[int, int]:
    """Mutated streams of valid frames (and some pure noise); (inputs, messages decoded)."""
    rng = random.Random(seed)
    decoded = 0
    for _ in range(iterations):
        replies = rng.random() < 0.5
        stream = b"".join(random_frame(rng, replies) for _ in range(rng.randint(1, 4)))
        noise = rng.random() < 0.1
        stream = rng.randbytes(rng.randint(0, 200)) if noise else mutate(rng, stream)
        decoded += check_stream(stream, replies=replies, msize=rng.choice(MSIZES), rng=rng)
    return iterations, decoded


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--random", type=int, metavar="N", help="N random inputs, no atheris")
    parser.add_argument("--seed", type=int, default=0)
    args, rest = parser.parse_known_args(argv[1:])
    if args.random is not None:
        inputs, decoded = random_run(args.random, args.seed)
        print(f"{inputs} inputs, {decoded} messages decoded, no invariant broken")
        return 0
    # Coverage-guided runs only: the --random fuzzer needs no atheris.
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

    atheris.instrument_all()
    atheris.Setup([argv[0], *rest], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
