"""A hostile 9P server for the fuzzer: a real server behind a proxy that corrupts replies.

    python fuzz_proxy.py --seed S [--report PATH] [--timeout T] -- SERVER ARG...

Speaks 9P on stdin/stdout (one socket, as qsf-fuse --exec gives it) and runs
SERVER on a socketpair (its stdin/stdout: qsf-server, or diod with --rfdno 0
--wfdno 1). Requests pass unchanged; replies are mutated in the ways listed in
KINDS, chosen by a random generator seeded with S, so that a seed replays the
same plan (the n-th reply gets the same treatment; which request is the n-th
one may vary with the timing of concurrent requests). Standard library only:
it starts fast and shares no code with the client it attacks.

It writes a JSON report (the seed, the mutations made, whether the client's
EOF was seen) after each mutation and at exit: a client that judges the
server frozen kills it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

HEADER = 7
NOTAG = 0xFFFF
RLERROR, TFLUSH, RFLUSH = 7, 108, 109
TVERSION, TREAD, TWALK, TREADDIR = 100, 116, 110, 40
# qsf's extensions (docs/PROTOCOL.md): a listing with attributes, change notification.
TQSFREADDIR, TQSFWATCH = 200, 202
RREADDIR, RQSFREADDIR, RQSFWATCH = TREADDIR + 1, TQSFREADDIR + 1, TQSFWATCH + 1
LISTINGS = (RREADDIR, RQSFREADDIR)
QSF_ENTRY_TAIL = 1 + 153  # flags[1] attr[153] after an Rreaddir entry
R_TYPES = (7, 9, 13, 15, 17, 19, 21, 23, 25, 27, 31, 33, 41, 51, 53, 55, 71, 73, 75, 77,
           101, 105, 107, 109, 111, 117, 119, 121, 123, RQSFREADDIR, RQSFWATCH)
ODD_ERRNOS = (0, 4096, 0xFFFFFFFF, 0x80000000, 512, 4095, 1, 4, 11, 5, 28, 13, 22, 95, 36)

# What can happen to one reply. "withhold" keeps it until the client flushes the
# tag, then sends it before or after the Rflush, or never; "delay" sends it late;
# "stall" and "stop-reading" end the session's traffic (a frozen server);
# "endless" makes the listing of the next directory read never end (fresh
# entries for ever, as a directory that grows faster than it is read).
KINDS = {
    "flip": 6, "size": 4, "truncate": 3, "eof": 2, "tag-inflight": 4, "tag-random": 3,
    "duplicate": 4, "unsolicited": 3, "type": 4, "retype": 3, "count": 8, "field": 8,
    "errno": 5, "names": 3, "split": 6, "withhold": 3, "delay": 2, "stall": 1,
    "stop-reading": 1, "huge": 2, "events": 4, "endless": 1,
}
DELAYING = {"withhold", "delay", "stall", "stop-reading", "huge", "endless"}
MAX_DELAYING = 3


def frames(read: Callable[[], bytes]) -> Iterator[bytes]:
    """Yield whole frames from a byte source (stops at EOF or a size below 7)."""
    buffer = b""
    while True:
        while len(buffer) < 4 or len(buffer) < struct.unpack_from("<I", buffer)[0]:
            if len(buffer) >= 4 and struct.unpack_from("<I", buffer)[0] < HEADER:
                return
            data = read()
            if not data:
                return
            buffer += data
        size = struct.unpack_from("<I", buffer)[0]
        yield buffer[:size]
        buffer = buffer[size:]


def header(frame: bytes) -> tuple[int, int]:
    return frame[4], struct.unpack_from("<H", frame, 5)[0]


def build(kind: int, tag: int, body: bytes) -> bytes:
    return struct.pack("<IBH", HEADER + len(body), kind, tag) + body


def string(data: bytes) -> bytes:
    return struct.pack("<H", len(data)) + data


class Proxy:
    def __init__(self, seed: int, timeout: float, server: list[str],
                 plan: dict[int, str] | None = None, report: str | None = None) -> None:
        self.report = report
        self.rng = random.Random(seed)
        self.plan = plan  # reply number -> mutation: exactly these, nothing at random
        self.seed = seed
        self.timeout = timeout
        self.client = socket.socket(fileno=os.dup(0))
        ours, theirs = socket.socketpair()
        self.server_sock = ours
        self.server = subprocess.Popen(server, stdin=theirs.fileno(), stdout=theirs.fileno(),
                                       close_fds=True)
        theirs.close()
        self.lock = threading.Lock()  # the client socket's send side and the state below
        self.inflight: dict[int, tuple[int, bytes]] = {}  # tag -> (type, request body)
        self.flushes: dict[int, int] = {}  # flush tag -> old tag
        self.withheld: dict[int, bytes] = {}  # old tag -> reply kept back
        self.recent: list[bytes] = []
        self.mutations: list[tuple[int, str]] = []
        self.delaying = 0
        self.endless: set[int] = set()  # directory fids whose listing never ends
        self.endless_next = False  # the next listing's fid joins them
        self.endless_entries = 0
        self.silent = False  # stall: send nothing more
        self.deaf = False  # stop-reading: read nothing more
        self.client_eof = threading.Event()
        self.msize = 8192
        self.rate = self.rng.choice((1 / 4, 1 / 12, 1 / 12, 1 / 40))
        self.protect = self.rng.random() < 0.85  # leave Tversion/Tattach alone

    # -- the client's side ---------------------------------------------------

    def send(self, data: bytes) -> None:
        with self.lock:
            if self.silent:
                return
            try:
                self.client.sendall(data)
            except OSError:
                self.silent = True

    def requests(self) -> None:
        """Forward requests to the server; note their tags."""
        def read() -> bytes:
            if self.deaf:
                return b""
            try:
                return self.client.recv(65536)
            except OSError:
                return b""

        for frame in frames(read):
            kind, tag = header(frame)
            with self.lock:
                self.inflight[tag] = (kind, frame[HEADER:])
                if kind == TVERSION:
                    self.msize = max(4096, min(struct.unpack_from("<I", frame, 7)[0], 1 << 20))
                if kind == TFLUSH:
                    self.flushes[tag] = struct.unpack_from("<H", frame, 7)[0]
            try:
                self.server_sock.sendall(frame)
            except OSError:
                break
        if self.deaf:
            # A server that stopped reading still sees the channel close.
            poller = select.poll()
            poller.register(self.client, select.POLLRDHUP)
            while not poller.poll(1000):
                pass
        self.client_eof.set()

    # -- the server's side ---------------------------------------------------

    def replies(self) -> None:
        def read() -> bytes:
            try:
                return self.server_sock.recv(65536)
            except OSError:
                return b""

        count = 0
        for frame in frames(read):
            count += 1
            kind, tag = header(frame)
            with self.lock:
                request = self.inflight.pop(tag, None)
                self.recent = [*self.recent[-7:], frame]
            if kind == RFLUSH and tag in self.flushes:
                self.answer_flush(frame, tag)
                continue
            if kind in LISTINGS and request is not None and len(request[1]) >= 16:
                fid = struct.unpack_from("<I", request[1])[0]
                if self.endless_next:
                    self.endless_next = False
                    self.endless.add(fid)
                if fid in self.endless:
                    self.send(self.endless_listing(kind, tag, request))
                    self.save_report()
                    continue
            mutation = self.choose(count, kind)
            if mutation is None:
                self.send(frame)
            else:
                with self.lock:
                    self.mutations.append((count, mutation))
                self.save_report()
                self.mutate(mutation, frame, request)
        # The server closed: so does the channel to the client.
        with self.lock, contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_WR)

    def choose(self, count: int, kind: int) -> str | None:
        if self.plan is not None:
            return self.plan.get(count)
        if self.protect and count <= 2:
            return None
        if self.rng.random() >= self.rate:
            return None
        names = list(KINDS)
        mutation = self.rng.choices(names, weights=[KINDS[n] for n in names])[0]
        if mutation in DELAYING:
            if self.delaying >= MAX_DELAYING:
                return "flip"
            self.delaying += 1
        return mutation

    def answer_flush(self, rflush: bytes, flushtag: int) -> None:
        old = self.flushes.pop(flushtag)
        with self.lock:
            late = self.withheld.pop(old, None)
        order = self.rng.choice(("before", "after", "never"))
        if late is not None and order == "before":
            self.send(late)
        self.send(rflush)
        if late is not None and order == "after":
            self.send(late)

    def mutate(self, mutation: str, frame: bytes, request: tuple[int, bytes] | None) -> None:
        rng = self.rng
        kind, tag = header(frame)
        body = frame[HEADER:]
        if mutation == "flip":
            data = bytearray(frame)
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            self.send(bytes(data))
        elif mutation == "size":
            size = rng.choice((0, 3, 6, 7, len(frame) - 1, len(frame) + 1, len(frame) + 100,
                               self.msize, self.msize + 1, 0xFFFFFFFF))
            self.send(struct.pack("<I", size) + frame[4:])
        elif mutation == "truncate":
            self.send(frame[: rng.randrange(1, len(frame))])
        elif mutation == "eof":
            self.send(frame[: rng.randrange(1, len(frame))])
            with self.lock:
                self.silent = True
                with contextlib.suppress(OSError):
                    self.client.shutdown(socket.SHUT_WR)
        elif mutation == "tag-inflight":
            with self.lock:
                others = [t for t in self.inflight if t != tag]
            other = rng.choice(others) if others else rng.randrange(NOTAG)
            self.send(frame[:5] + struct.pack("<H", other) + body)
        elif mutation == "tag-random":
            self.send(frame[:5] + struct.pack("<H", rng.choice((NOTAG, rng.randrange(NOTAG))))
                      + body)
        elif mutation == "duplicate":
            self.send(frame + frame)
        elif mutation == "unsolicited":
            with self.lock:
                old = rng.choice(self.recent)
            self.send(old[:5] + struct.pack("<H", rng.randrange(NOTAG)) + old[HEADER:] + frame)
        elif mutation == "type":
            self.send(frame[:4] + bytes([rng.choice(R_TYPES)]) + frame[5:])
        elif mutation == "retype":
            fake = rng.choice((build(121, tag, b""),
                                build(117, tag, struct.pack("<I", 3) + b"abc"),
                                build(111, tag, struct.pack("<H", 0)),
                                build(RLERROR, tag, struct.pack("<I", 2)),
                                build(RFLUSH, tag, b"")))
            self.send(fake)
        elif mutation == "count":
            self.send(self.lie_count(frame, request))
        elif mutation == "field":
            self.send(self.odd_field(frame))
        elif mutation == "errno":
            self.send(build(RLERROR, tag, struct.pack("<I", rng.choice(ODD_ERRNOS))))
        elif mutation == "names":
            self.send(self.odd_names(frame))
        elif mutation == "split":
            cuts = (range(1, len(frame)) if len(frame) <= 512
                    else sorted(rng.sample(range(1, len(frame)), 32)))
            start = 0
            for cut in [*cuts, len(frame)]:
                self.send(frame[start:cut])
                start = cut
                if rng.random() < 0.1:
                    time.sleep(0.001)
        elif mutation == "withhold":
            with self.lock:
                self.withheld[tag] = frame
        elif mutation == "delay":
            threading.Timer(rng.uniform(0.3, 2.5) * self.timeout, self.send, (frame,)).start()
        elif mutation == "stall":
            with self.lock:
                self.silent = True
        elif mutation == "stop-reading":
            with self.lock:
                self.silent = True
            self.deaf = True
        elif mutation == "events":
            self.send(self.odd_events(frame))
        elif mutation == "endless":
            self.endless_next = True
            self.send(frame)
        elif mutation == "huge":
            size = rng.choice((self.msize, self.msize - 1, 1 << 20, 1 << 31))
            self.send(struct.pack("<IBH", size, kind, tag) + os.urandom(rng.randrange(64)))
            with self.lock:
                self.silent = True

    def lie_count(self, frame: bytes, request: tuple[int, bytes] | None) -> bytes:
        """A count, a size or a number of items in the reply that is too big."""
        rng = self.rng
        kind, tag = header(frame)
        body = frame[HEADER:]
        asked = 0
        if (request is not None and request[0] in (TREAD, TREADDIR, TQSFREADDIR)
                and len(request[1]) >= 16):
            asked = struct.unpack_from("<I", request[1], 12)[0]
        if kind == 117 and asked and rng.random() < 0.5:  # Rread: more than asked, well formed
            data = os.urandom(min(asked + rng.randint(1, 4096), self.msize - 11))
            return build(117, tag, struct.pack("<I", len(data)) + data)
        if kind in (117, 23, *LISTINGS, RQSFWATCH) and len(body) >= 4:  # a count that lies
            return frame[:7] + struct.pack("<I", rng.choice((len(body), 0xFFFFFFFF, 1 << 20)))\
                + body[4:]
        if kind == 111:  # Rwalk: more qids than names, or than MAXWELEM
            n = rng.choice((17, 2, 0xFFFF))
            qids = os.urandom(13) * min(n, 17)
            return build(111, tag, struct.pack("<H", n) + qids)
        if kind == 31:  # Rxattrwalk: a huge value
            return build(31, tag, struct.pack("<Q", rng.choice((1 << 63, 65537, 1 << 64 - 1))))
        if kind == 23:  # Rreadlink
            return build(23, tag, string(rng.choice((b"", b"a\0b", b"x" * 5000))))
        return frame[:7] + os.urandom(4) + body[4:]

    def odd_field(self, frame: bytes) -> bytes:
        """One field of the body set to an extreme value (attributes, qids, iounit...)."""
        rng = self.rng
        body = bytearray(frame[HEADER:])
        if not body:
            return frame + b"\0"
        width = rng.choice((1, 2, 4, 8))
        start = rng.randrange(max(1, len(body) - width + 1))
        value = rng.choice((0, 1, (1 << (8 * width)) - 1, 1 << (8 * width - 1),
                            rng.getrandbits(8 * width)))
        body[start:start + width] = value.to_bytes(width, "little")[: len(body) - start]
        return frame[:HEADER] + bytes(body)

    def odd_names(self, frame: bytes) -> bytes:
        """Rreaddir with a name no file can have, or a duplicate; others get a flip."""
        rng = self.rng
        kind, tag = header(frame)
        if kind not in LISTINGS:
            return self.odd_field(frame)
        name = rng.choice((b"", b".", b"..", b"a/b", b"a\0b", b"x" * 256, b"x" * 255,
                           b"\xff\xfe", b"dup", b"dup"))
        entry = os.urandom(13) + struct.pack("<QB", rng.getrandbits(63), rng.randrange(256)) \
            + string(name)
        if kind == RQSFREADDIR:
            # Flags and attributes that lie too: random, or claiming attributes of zeros.
            entry += rng.choice((os.urandom(QSF_ENTRY_TAIL), b"\x03" + bytes(153)))
        entries = frame[HEADER + 4:] + entry + entry
        return build(kind, tag, struct.pack("<I", len(entries)) + entries)

    def odd_events(self, frame: bytes) -> bytes:
        """An Rqsfwatch batch of events no server can mean; other replies get a field."""
        rng = self.rng
        kind, tag = header(frame)
        if kind != RQSFWATCH:
            return self.odd_field(frame)
        events = b""
        for _ in range(rng.randint(1, 40)):
            name = rng.choice((b"", b".", b"..", b"a/b", b"a\0b", b"x" * 255, b"\xff",
                               b"a", b"b", b"sub"))
            events += struct.pack("<BQQ", rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255)),
                                  rng.choice((0, 1, rng.getrandbits(64))),
                                  rng.choice((0, 1, rng.getrandbits(64)))) + string(name)
        if rng.random() < 0.3:
            events = frame[HEADER + 4:] + events  # the real ones first
        return build(RQSFWATCH, tag, struct.pack("<I", len(events)) + events)

    def endless_listing(self, kind: int, tag: int, request: tuple[int, bytes]) -> bytes:
        """A full, well-formed batch of entries no earlier batch had: never the end."""
        asked = min(struct.unpack_from("<I", request[1], 12)[0], self.msize - 11)
        entries = b""
        while True:
            self.endless_entries += 1
            name = b"endless-%d" % self.endless_entries
            entry = (struct.pack("<BIQ", 0, 0, 1 << 40 | self.endless_entries)
                     + struct.pack("<QB", self.endless_entries, 8) + string(name))
            if kind == RQSFREADDIR:
                entry += bytes(QSF_ENTRY_TAIL)
            if len(entries) + len(entry) > asked:
                break
            entries += entry
        return build(kind, tag, struct.pack("<I", len(entries)) + entries)

    # -- life cycle ----------------------------------------------------------

    def save_report(self) -> None:
        if self.report is None:
            return
        with self.lock:
            state = {"seed": self.seed, "rate": self.rate, "mutations": list(self.mutations),
                     "client_eof": self.client_eof.is_set(),
                     "endless_entries": self.endless_entries}
        partial = f"{self.report}.partial"
        with open(partial, "w") as report:
            json.dump(state, report)
        os.replace(partial, self.report)

    def run(self) -> int:
        replies = threading.Thread(target=self.replies, daemon=True)
        replies.start()
        self.requests()
        # The client is gone: so is the server.
        with contextlib.suppress(OSError):
            self.server_sock.shutdown(socket.SHUT_WR)
        try:
            self.server.wait(5)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=1.0, help="the client's request timeout")
    parser.add_argument("--report")
    parser.add_argument("--plan", help="N:KIND,... mutate exactly reply N in that way")
    parser.add_argument("server", nargs="+")
    args = parser.parse_args()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    plan = None
    if args.plan is not None:
        plan = {int(n): kind for n, kind in (item.split(":") for item in args.plan.split(","))}
        assert set(plan.values()) <= set(KINDS), plan
    proxy = Proxy(args.seed, args.timeout, args.server, plan, args.report)
    status = proxy.run()
    proxy.save_report()
    return status


if __name__ == "__main__":
    sys.exit(main())
