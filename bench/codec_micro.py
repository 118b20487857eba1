"""Per-message costs of the qsf_p9 codec: fast path, construct spec, whole Decoder.

Run: /opt/qsf-venv/bin/python -m bench.codec_micro [--repeat N]
Prints microseconds per message (best of 9 timeit repeats, so that a busy
machine shows its quiet moments) for encoding a
whole frame, decoding a body with the fast codec and with the spec, and
decoding a frame through Decoder (receive_data + next_message).
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

from qsf_p9 import fast, spec
from qsf_p9 import messages as m
from qsf_p9.codec import Decoder, encode
from qsf_p9.messages import Dirent, Message, Qid

QID = Qid(0, 0x5F3A, 123456789)
CASES: list[tuple[str, Message]] = [
    ("Tread", m.Tread(7, 1 << 20, 131072)),
    ("Twrite 4 KiB", m.Twrite(7, 1 << 20, b"w" * 4096)),
    ("Twalk 3 names", m.Twalk(1, 2, (b"home", b"user", b"Documents"))),
    ("Rgetattr", m.Rgetattr(0x3FFF, QID, 0o100644, 1000, 1000, 1, 0, 123456, 4096, 248,
                            1_700_000_000, 123456789, 1_700_000_000, 123456789,
                            1_700_000_000, 123456789, 1_700_000_000, 123456789, 0, 0)),
    ("Rreaddir 50 entries", m.Rreaddir(tuple(
        Dirent(Qid(0, 1, 1000 + i), i + 1, 8, b"file-%04d.txt" % i) for i in range(50)))),
]


def per_call(function: Callable[[], object], number: int) -> float:
    """Microseconds per call, best of 9."""
    return min(timeit.repeat(function, number=number, repeat=9)) / number * 1e6


def through_decoder(cls: type[Message], frame: bytes) -> Callable[[], object]:
    decoder = Decoder(replies=m.REPLIES.get(cls.TYPE) is cls)

    def run() -> object:
        decoder.receive_data(frame)
        return decoder.next_message()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10000, help="calls per timing")
    number = parser.parse_args().repeat
    columns = ("encode", "enc spec", "decode", "dec spec", "Decoder")
    print(f"{'us per message':<22}" + "".join(f"{name:>10}" for name in columns))
    for name, message in CASES:
        cls = type(message)
        frame = encode(1, message)
        body = memoryview(frame)[7:]
        fast_decode = fast.DECODERS[cls.TYPE]
        spec_number = max(1, number // 20)
        row = [
            per_call(lambda: encode(1, message), number),  # noqa: B023
            per_call(lambda: spec.encode_body(message), spec_number),  # noqa: B023
            per_call(lambda: fast_decode(body), number),  # noqa: B023
            per_call(lambda: spec.decode_body(cls, body), spec_number),  # noqa: B023
            per_call(through_decoder(cls, frame), number),
        ]
        print(f"{name:<22}" + "".join(f"{value:>10.2f}" for value in row))


if __name__ == "__main__":
    main()
