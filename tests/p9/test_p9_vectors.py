"""Hand-written frames from reference/9p2000L.md: the codec against the wire format."""

from __future__ import annotations

import pytest

from qsf_p9 import constants as c
from qsf_p9 import messages as m
from qsf_p9.codec import Decoder, encode
from qsf_p9.messages import Dirent, Message, Qid


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# (hex frame, tag, message); fields grouped as the reference writes them.
VECTORS: list[tuple[str, int, Message]] = [
    # Linux's Tversion: NOTAG, msize 131096 (128 KiB + 24), "9P2000.L"
    ("15000000 64 ffff 18000200 0800 3950323030302e4c", c.NOTAG,
     m.Tversion(131096, b"9P2000.L")),
    ("15000000 65 ffff 00000100 0800 3950323030302e4c", c.NOTAG,
     m.Rversion(65536, b"9P2000.L")),
    # Tattach fid 0, afid NOFID, uname "", aname "/srv", n_uname 1000
    ("1b000000 68 0000 00000000 ffffffff 0000 0400 2f737276 e8030000", 0,
     m.Tattach(0, c.NOFID, b"", b"/srv", 1000)),
    ("14000000 69 0000 80 01000000 0200000000000000", 0, m.Rattach(Qid(c.QTDIR, 1, 2))),
    # Rlerror ENOENT
    ("0b000000 07 0100 02000000", 1, m.Rlerror(2)),
    # Twalk fid 0 -> newfid 1, "foo" "bar"
    ("1b000000 6e 0200 00000000 01000000 0200 0300 666f6f 0300 626172", 2,
     m.Twalk(0, 1, (b"foo", b"bar"))),
    # clone walk: nwname 0
    ("11000000 6e 0200 05000000 06000000 0000", 2, m.Twalk(5, 6, ())),
    ("16000000 6f 0200 0100 00 07000000 0900000000000000", 2,
     m.Rwalk((Qid(c.QTFILE, 7, 9),))),
    ("13000000 18 0300 01000000 ff3f000000000000", 3, m.Tgetattr(1, c.GETATTR_ALL)),
    ("17000000 74 0400 01000000 0000000010000000 00000200", 4,
     m.Tread(1, 0x10_0000_0000, 131072)),
    ("0d000000 75 0400 02000000 6869", 4, m.Rread(b"hi")),
    # Twrite at offset 4 GiB: count[4] equals the 3 bytes present
    ("1a000000 76 0500 03000000 0000000001000000 03000000 616263", 5,
     m.Twrite(3, 0x1_0000_0000, b"abc")),
    ("0b000000 77 0500 03000000", 5, m.Rwrite(3)),
    ("0b000000 78 0600 03000000", 6, m.Tclunk(3)),
    ("07000000 79 0600", 6, m.Rclunk()),
    # Rreaddir with one entry ".": qid[13] offset[8] type[1] name[s]
    ("24000000 29 0600 19000000 80 01000000 0200000000000000 0300000000000000 04 0100 2e", 6,
     m.Rreaddir((Dirent(Qid(c.QTDIR, 1, 2), 3, c.DT_DIR, b"."),))),
    ("0f000000 0c 0700 01000000 00880100", 7,
     m.Tlopen(1, c.L_O_RDONLY | c.L_O_DIRECTORY | c.L_O_LARGEFILE | c.L_O_NONBLOCK)),
    ("18000000 0d 0700 00 01000000 0200000000000000 00000000", 7,
     m.Rlopen(Qid(c.QTFILE, 1, 2), 0)),
    # Tlock fid 1 WRLCK BLOCK start 0 length 0 proc_id 42 client_id "host"
    ("2a000000 34 0800 01000000 01 01000000 0000000000000000 0000000000000000 2a000000"
     " 0400 686f7374", 8, m.Tlock(1, c.LOCK_TYPE_WRLCK, c.LOCK_FLAGS_BLOCK, 0, 0, 42, b"host")),
    ("08000000 35 0800 00", 8, m.Rlock(c.LOCK_SUCCESS)),
    ("0f000000 32 0900 05000000 01000000", 9, m.Tfsync(5, 1)),
    ("12000000 4c 0a00 02000000 0100 78 00020000", 10, m.Tunlinkat(2, b"x", c.AT_REMOVEDIR)),
    ("09000000 6c 0b00 0400", 11, m.Tflush(4)),
    ("11000000 1e 0c00 01000000 02000000 0000", 12, m.Txattrwalk(1, 2, b"")),
]


def _direction(message: Message) -> bool:
    return m.REPLIES.get(message.TYPE) is type(message)


@pytest.mark.parametrize(("frame", "tag", "message"), VECTORS,
                         ids=[type(v[2]).__name__ for v in VECTORS])
def test_vector(frame: str, tag: int, message: Message) -> None:
    wire = h(frame)
    assert encode(tag, message) == wire
    decoder = Decoder(replies=_direction(message))
    decoder.receive_data(wire)
    assert decoder.next_message() == (tag, message)


def test_rgetattr_layout() -> None:
    # valid[8] qid[13] mode[4] uid[4] gid[4] then 15 fields of 8 bytes: 153 bytes of body
    message = m.Rgetattr(
        0x17FF, Qid(0, 0x01020304, 0x1122334455667788), 0o100644, 1000, 1001, 1, 0, 4096,
        4096, 8, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
    )
    frame = encode(9, message)
    assert len(frame) == 7 + 153
    assert frame[:7] == h("a0000000 19 0900")
    assert frame[7:15] == h("ff17000000000000")
    assert frame[15:28] == h("00 04030201 8877665544332211")
    assert frame[28:40] == h("a4810000 e8030000 e9030000")
    assert frame[40:48] == h("0100000000000000")
    assert frame[-16:] == h("1300000000000000 1400000000000000")


def test_tfsync_of_only_a_fid_means_datasync_0() -> None:
    decoder = Decoder(replies=False)
    decoder.receive_data(h("0b000000 32 0100 05000000"))
    assert decoder.next_message() == (1, m.Tfsync(5, 0))


def test_overheads_that_servers_size_replies_with() -> None:
    from qsf_p9.codec import DIRENT_OVERHEAD, RREAD_OVERHEAD

    assert len(encode(1, m.Rread(b"d" * 1000))) == RREAD_OVERHEAD + 1000
    entry = Dirent(Qid(0, 0, 0), 0, 0, b"name")
    assert len(encode(1, m.Rreaddir((entry, entry)))) == RREAD_OVERHEAD + 2 * (DIRENT_OVERHEAD + 4)
