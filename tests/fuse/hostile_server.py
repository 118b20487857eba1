"""A 9P2000.L "server" for tests that answers correctly until asked about a bad name.

    python hostile_server.py

Serves on stdin/stdout an empty root directory with the files named below;
looking one up makes it misbehave in the way its name says. Used by
test_fuse_hostile.py to show that the client fails that call (or the
connection), never the process or the mount's other calls.
"""

from __future__ import annotations

import os
import sys

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_p9.codec import EOF, NEED_DATA, Decoder, encode

ROOT = m.Qid(c.QTDIR, 1, 1)
FILE = m.Qid(c.QTFILE, 1, 2)


def attrs(qid: m.Qid, mode: int, size: int = 0, nsec: int = 0) -> m.Rgetattr:
    return m.Rgetattr(c.GETATTR_BASIC, qid, mode, 0, 0, 1, 0, size, 4096, 0,
                      0, nsec, 0, nsec, 0, nsec, 0, 0, 0, 0)


def main() -> int:
    read_fd, write_fd = sys.stdin.fileno(), sys.stdout.fileno()
    decoder = Decoder(replies=False)
    fids: dict[int, bytes] = {}

    def send(data: bytes) -> None:
        while data:
            data = data[os.write(write_fd, data):]

    while True:
        item = decoder.next_message()
        if item is NEED_DATA:
            decoder.receive_data(os.read(read_fd, 65536))
            continue
        if item is EOF:
            return 0
        tag, request = item
        reply: m.Message = m.Rlerror(95)  # EOPNOTSUPP
        if isinstance(request, m.Tversion):
            reply = m.Rversion(min(request.msize, 65536), c.VERSION_9P2000L)
        elif isinstance(request, m.Tattach):
            fids[request.fid] = b"/"
            reply = m.Rattach(ROOT)
        elif isinstance(request, m.Tclunk):
            fids.pop(request.fid, None)
            reply = m.Rclunk()
        elif isinstance(request, m.Twalk):
            name = request.wnames[-1] if request.wnames else fids.get(request.fid, b"/")
            if not request.wnames:
                fids[request.newfid] = fids.get(request.fid, b"/")
                reply = m.Rwalk(())
            elif name == b"wrong-type":
                reply = m.Rread(b"not a walk reply")
            elif name.startswith(b"errno-"):
                reply = m.Rlerror(int(name[6:]))
            elif name == b"too-many-qids":
                reply = m.Rwalk((FILE, FILE))
            elif name == b"garbage":
                send(b"\x03\x00\x00\x00garbage")  # a frame shorter than its header
                continue
            elif name in (b"bad-type", b"bad-time", b"ok"):
                fids[request.newfid] = name
                reply = m.Rwalk((FILE,))
            else:
                reply = m.Rlerror(2)  # ENOENT
        elif isinstance(request, m.Tgetattr):
            name = fids.get(request.fid, b"/")
            if name == b"/":
                reply = attrs(ROOT, 0o40755)
            elif name == b"bad-type":
                reply = attrs(FILE, 0o170644)  # no such file type
            elif name == b"bad-time":
                reply = attrs(FILE, 0o100644, nsec=2_000_000_000)
            else:
                reply = attrs(FILE, 0o100644, size=5)
        elif isinstance(request, m.Tstatfs):
            reply = m.Rstatfs(0, 4096, 100, 50, 50, 10, 5, 0, 255)
        send(encode(tag, reply))


if __name__ == "__main__":
    sys.exit(main())
