"""An independent reading of reference/9p2000L.md for the tests.

WIRE copies the reference's message table as text. From it come hypothesis
strategies for every message and a naive reference encoder (int.to_bytes and
concatenation), so that the construct spec is checked against the written wire
format and not only against itself.

Notation: `x[n]` an n-byte little-endian integer, `x[s]` a string, `x[13]`
a qid. Multi-part fields of the reference, named after the dataclass field:
`wnames[n*s]` = nwname[2] nwname*(wname[s]); `wqids[n*13]` = nwqid[2]
nwqid*(qid[13]); `data[count]` = count[4] data[count]; `entries[dirents]` =
count[4] then whole entries qid[13] offset[8] type[1] name[s] filling count;
`entries[qdirents]` = count[4] then whole entries qid[13] offset[8] type[1]
name[s] flags[1] attr[153] (an Rgetattr body); `events[qevents]` = count[4]
then whole events kind[1] path[8] dir[8] name[s].
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import strategies as st

from qsf_p9 import messages as m
from qsf_p9.messages import Dirent, Message, Qid

_GETATTR = (
    "valid[8] qid[13] mode[4] uid[4] gid[4] nlink[8] rdev[8] size[8] blksize[8] blocks[8] "
    "atime_sec[8] atime_nsec[8] mtime_sec[8] mtime_nsec[8] ctime_sec[8] ctime_nsec[8] "
    "btime_sec[8] btime_nsec[8] gen[8] data_version[8]"
)

WIRE: dict[type[Message], str] = {
    m.Tversion: "msize[4] version[s]",
    m.Rversion: "msize[4] version[s]",
    m.Tauth: "afid[4] uname[s] aname[s] n_uname[4]",
    m.Rauth: "aqid[13]",
    m.Tattach: "fid[4] afid[4] uname[s] aname[s] n_uname[4]",
    m.Rattach: "qid[13]",
    m.Rlerror: "ecode[4]",
    m.Tflush: "oldtag[2]",
    m.Rflush: "",
    m.Twalk: "fid[4] newfid[4] wnames[n*s]",
    m.Rwalk: "wqids[n*13]",
    m.Tread: "fid[4] offset[8] count[4]",
    m.Rread: "data[count]",
    m.Twrite: "fid[4] offset[8] data[count]",
    m.Rwrite: "count[4]",
    m.Tclunk: "fid[4]",
    m.Rclunk: "",
    m.Tremove: "fid[4]",
    m.Rremove: "",
    m.Tstatfs: "fid[4]",
    m.Rstatfs: "type[4] bsize[4] blocks[8] bfree[8] bavail[8] files[8] ffree[8] fsid[8] namelen[4]",
    m.Tlopen: "fid[4] flags[4]",
    m.Rlopen: "qid[13] iounit[4]",
    m.Tlcreate: "fid[4] name[s] flags[4] mode[4] gid[4]",
    m.Rlcreate: "qid[13] iounit[4]",
    m.Tsymlink: "fid[4] name[s] symtgt[s] gid[4]",
    m.Rsymlink: "qid[13]",
    m.Tmknod: "dfid[4] name[s] mode[4] major[4] minor[4] gid[4]",
    m.Rmknod: "qid[13]",
    m.Trename: "fid[4] dfid[4] name[s]",
    m.Rrename: "",
    m.Treadlink: "fid[4]",
    m.Rreadlink: "target[s]",
    m.Tgetattr: "fid[4] request_mask[8]",
    m.Rgetattr: _GETATTR,
    m.Tsetattr: "fid[4] valid[4] mode[4] uid[4] gid[4] size[8] atime_sec[8] atime_nsec[8] "
    "mtime_sec[8] mtime_nsec[8]",
    m.Rsetattr: "",
    m.Txattrwalk: "fid[4] newfid[4] name[s]",
    m.Rxattrwalk: "size[8]",
    m.Txattrcreate: "fid[4] name[s] attr_size[8] flags[4]",
    m.Rxattrcreate: "",
    m.Treaddir: "fid[4] offset[8] count[4]",
    m.Rreaddir: "entries[dirents]",
    m.Tfsync: "fid[4] datasync[4]",
    m.Rfsync: "",
    m.Tlock: "fid[4] type[1] flags[4] start[8] length[8] proc_id[4] client_id[s]",
    m.Rlock: "status[1]",
    m.Tgetlock: "fid[4] type[1] start[8] length[8] proc_id[4] client_id[s]",
    m.Rgetlock: "type[1] start[8] length[8] proc_id[4] client_id[s]",
    m.Tlink: "dfid[4] fid[4] name[s]",
    m.Rlink: "",
    m.Tmkdir: "dfid[4] name[s] mode[4] gid[4]",
    m.Rmkdir: "qid[13]",
    m.Trenameat: "olddirfid[4] oldname[s] newdirfid[4] newname[s]",
    m.Rrenameat: "",
    m.Tunlinkat: "dirfid[4] name[s] flags[4]",
    m.Runlinkat: "",
    # qsf extensions (docs/PROTOCOL.md)
    m.Tqsfreaddir: "fid[4] offset[8] count[4]",
    m.Rqsfreaddir: "entries[qdirents]",
    m.Tqsfwatch: "count[4]",
    m.Rqsfwatch: "events[qevents]",
}

ALL_CLASSES = list(WIRE)
HOT_CLASSES = [
    m.Tread, m.Rread, m.Twrite, m.Rwrite, m.Twalk, m.Rwalk, m.Tgetattr, m.Rgetattr,
    m.Tclunk, m.Rclunk, m.Treaddir, m.Rreaddir, m.Tlopen, m.Rlopen, m.Rlerror,
    m.Tqsfreaddir, m.Rqsfreaddir, m.Tqsfwatch, m.Rqsfwatch,
]

_FIELD = re.compile(r"(\w+)\[(\w+|n\*s|n\*13)\]\Z")


def fields(cls: type[Message]) -> list[tuple[str, str]]:
    """(name, kind) of each wire field of `cls`, in order."""
    out = []
    for token in WIRE[cls].split():
        match = _FIELD.match(token)
        assert match, token
        out.append((match[1], match[2]))
    return out


# ---- strategies


def _uint(nbytes: int) -> st.SearchStrategy[int]:
    top = 2 ** (8 * nbytes) - 1
    # Edges are where width bugs show.
    return st.one_of(st.sampled_from([0, 1, top, top // 2 + 1]), st.integers(0, top))


names = st.binary(max_size=64) | st.binary(min_size=200, max_size=400)
qids = st.builds(Qid, _uint(1), _uint(4), _uint(8))
dirents = st.builds(Dirent, qids, _uint(8), _uint(1), names)
qsf_dirents = st.builds(
    m.QsfDirent, qids, _uint(8), _uint(1), names, _uint(1),
    st.deferred(lambda: message_strategy(m.Rgetattr)),
)
qsf_events = st.builds(m.QsfEvent, _uint(1), _uint(8), _uint(8), names)
payloads = st.binary(max_size=3000) | st.binary(max_size=3000).map(memoryview)


def _strategy(kind: str) -> st.SearchStrategy[Any]:
    if kind.isdigit() and kind != "13":
        return _uint(int(kind))
    return {
        "s": names,
        "13": qids,
        "n*s": st.lists(names, max_size=16).map(tuple),
        "n*13": st.lists(qids, max_size=16).map(tuple),
        "count": payloads,
        "dirents": st.lists(dirents, max_size=12).map(tuple),
        "qdirents": st.lists(qsf_dirents, max_size=6).map(tuple),
        "qevents": st.lists(qsf_events, max_size=12).map(tuple),
    }[kind]


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    return st.builds(cls, **{name: _strategy(kind) for name, kind in fields(cls)})


any_message = st.one_of([message_strategy(cls) for cls in ALL_CLASSES])
tags = _uint(2)

# ---- the naive reference encoder


def _int(value: int, nbytes: int) -> bytes:
    return value.to_bytes(nbytes, "little")


def _string(value: bytes) -> bytes:
    return _int(len(value), 2) + value


def _qid(qid: Qid) -> bytes:
    return _int(qid.type, 1) + _int(qid.version, 4) + _int(qid.path, 8)


def _dirent(entry: Dirent) -> bytes:
    return _qid(entry.qid) + _int(entry.offset, 8) + _int(entry.type, 1) + _string(entry.name)


def reference_body(message: Message) -> bytes:
    out = b""
    for name, kind in fields(type(message)):
        value = getattr(message, name)
        if kind == "s":
            out += _string(value)
        elif kind == "13":
            out += _qid(value)
        elif kind == "n*s":
            out += _int(len(value), 2) + b"".join(_string(v) for v in value)
        elif kind == "n*13":
            out += _int(len(value), 2) + b"".join(_qid(v) for v in value)
        elif kind == "count":
            out += _int(len(value), 4) + bytes(value)
        elif kind == "dirents":
            data = b"".join(_dirent(e) for e in value)
            out += _int(len(data), 4) + data
        elif kind == "qdirents":
            data = b"".join(
                _dirent(Dirent(*e[:4])) + _int(e.flags, 1) + reference_body(e.attr)
                for e in value
            )
            out += _int(len(data), 4) + data
        elif kind == "qevents":
            data = b"".join(
                _int(e.kind, 1) + _int(e.path, 8) + _int(e.dir, 8) + _string(e.name)
                for e in value
            )
            out += _int(len(data), 4) + data
        else:
            out += _int(value, int(kind))
    return out


def reference_frame(tag: int, message: Message) -> bytes:
    body = reference_body(message)
    return _int(7 + len(body), 4) + _int(message.TYPE, 1) + _int(tag, 2) + body


def plain(message: Message) -> Message:
    """`message` with memoryview payloads turned into bytes, for comparisons."""
    data = getattr(message, "data", None)
    if isinstance(data, memoryview | bytearray):
        return type(message)(**{  # type: ignore[call-arg]
            name: bytes(value) if name == "data" else value
            for name, value in ((n, getattr(message, n)) for n, _ in fields(type(message)))
        })
    return message


def is_reply(cls: type[Message]) -> bool:
    return m.REPLIES.get(cls.TYPE) is cls


requests = st.one_of([message_strategy(cls) for cls in ALL_CLASSES if not is_reply(cls)])
replies = st.one_of([message_strategy(cls) for cls in ALL_CLASSES if is_reply(cls)])


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` damaged a few times: cut, extended, overwritten, spliced."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["cut", "extend", "overwrite", "insert", "delete"]))
        at = draw(st.integers(0, len(data)))
        if op == "cut":
            del data[at:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b"\xff", b"\0"]))
            data[at : at + len(patch)] = patch
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)
