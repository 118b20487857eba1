"""The normative wire format of every 9P2000.L message body, as construct Structs.

Each Struct reads like the table in reference/9p2000L.md: `x[n]` is a
little-endian unsigned integer of n bytes, `x[s]` a string (len[2] + bytes,
never decoded), `qid[13]` type[1] version[4] path[8]. Every body must end
exactly where its frame ends (Terminated).

These are the plain (interpreted) Structs: construct's compiled parsers do not
check lengths and must never see untrusted bytes. `encode_body` and
`decode_body` go through them for every message; the codec uses them for the
cold messages and `fast` for the hot ones (tests check the two agree).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from construct import (
    Computed,
    ConstructError,
    ExprAdapter,
    FocusedSeq,
    GreedyBytes,
    GreedyRange,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Prefixed,
    PrefixedArray,
    Select,
    Struct,
    Terminated,
)

from . import messages as m
from .messages import Dirent, Message, Qid, QsfDirent, QsfEvent


def _exactly(subcon: Any) -> Any:
    """`subcon` that must consume its whole (sub)stream."""
    return FocusedSeq("value", "value" / subcon, Terminated)


def _body(*fields: Any) -> Any:
    """A message body: the fields, then nothing more."""
    return Struct(*fields, Terminated)


# string[s]: len[2] then len bytes, kept as bytes.
String = Prefixed(Int16ul, GreedyBytes)

# qid[13]
QidStruct = ExprAdapter(
    Struct("type" / Int8ul, "version" / Int32ul, "path" / Int64ul),
    lambda obj, ctx: Qid(obj.type, obj.version, obj.path),
    lambda obj, ctx: Qid(*obj)._asdict(),
)

# One Treaddir entry: qid[13] offset[8] type[1] name[s]
DirentStruct = ExprAdapter(
    Struct("qid" / QidStruct, "offset" / Int64ul, "type" / Int8ul, "name" / String),
    lambda obj, ctx: Dirent(obj.qid, obj.offset, obj.type, obj.name),
    lambda obj, ctx: Dirent(*obj)._asdict(),
)


def _tuple_of(subcon: Any) -> Any:
    """nitems[2] nitems*(subcon), as a tuple."""
    return ExprAdapter(
        PrefixedArray(Int16ul, subcon), lambda obj, ctx: tuple(obj), lambda obj, ctx: list(obj)
    )


def _buffer_to_bytes(obj: object, ctx: object) -> bytes:
    if not isinstance(obj, bytes | bytearray | memoryview):
        raise TypeError(f"data must be a bytes-like object, not {type(obj).__name__}")
    return bytes(obj)


# count[4] data[count]: the bytes present must be exactly count.
CountedData = Prefixed(
    Int32ul, ExprAdapter(GreedyBytes, lambda obj, ctx: obj, _buffer_to_bytes)
)

# Rreaddir count[4] data[count]: data is a sequence of whole entries filling count.
CountedDirents = ExprAdapter(
    Prefixed(Int32ul, _exactly(GreedyRange(DirentStruct))),
    lambda obj, ctx: tuple(obj),
    lambda obj, ctx: list(obj),
)

_EMPTY = _body()

# The Rgetattr body: valid[8] qid[13] mode[4] ... data_version[8] (153 bytes).
_GETATTR_FIELDS = (
    "valid" / Int64ul, "qid" / QidStruct, "mode" / Int32ul, "uid" / Int32ul,
    "gid" / Int32ul, "nlink" / Int64ul, "rdev" / Int64ul, "size" / Int64ul,
    "blksize" / Int64ul, "blocks" / Int64ul, "atime_sec" / Int64ul, "atime_nsec" / Int64ul,
    "mtime_sec" / Int64ul, "mtime_nsec" / Int64ul, "ctime_sec" / Int64ul,
    "ctime_nsec" / Int64ul, "btime_sec" / Int64ul, "btime_nsec" / Int64ul, "gen" / Int64ul,
    "data_version" / Int64ul,
)
_GETATTR_NAMES = tuple(field.name for field in dataclasses.fields(m.Rgetattr))
AttrStruct = ExprAdapter(
    Struct(*_GETATTR_FIELDS),
    lambda obj, ctx: m.Rgetattr(**{name: obj[name] for name in _GETATTR_NAMES}),
    lambda obj, ctx: {name: getattr(obj, name) for name in _GETATTR_NAMES},
)

# qsf extension: one Rqsfreaddir entry, qid[13] offset[8] type[1] name[s] flags[1] attr[153]
QsfDirentStruct = ExprAdapter(
    Struct("qid" / QidStruct, "offset" / Int64ul, "type" / Int8ul, "name" / String,
           "flags" / Int8ul, "attr" / AttrStruct),
    lambda obj, ctx: QsfDirent(obj.qid, obj.offset, obj.type, obj.name, obj.flags, obj.attr),
    lambda obj, ctx: QsfDirent(*obj)._asdict(),
)

# qsf extension: one Rqsfwatch event, kind[1] path[8] dir[8] name[s]
QsfEventStruct = ExprAdapter(
    Struct("kind" / Int8ul, "path" / Int64ul, "dir" / Int64ul, "name" / String),
    lambda obj, ctx: QsfEvent(obj.kind, obj.path, obj.dir, obj.name),
    lambda obj, ctx: QsfEvent(*obj)._asdict(),
)


def _counted_items(item: Any) -> Any:
    """count[4] then whole items filling exactly count bytes, as a tuple."""
    return ExprAdapter(
        Prefixed(Int32ul, _exactly(GreedyRange(item))),
        lambda obj, ctx: tuple(obj),
        lambda obj, ctx: list(obj),
    )


BODIES: dict[type[Message], Any] = {
    m.Tversion: _body("msize" / Int32ul, "version" / String),
    m.Rversion: _body("msize" / Int32ul, "version" / String),
    m.Tauth: _body("afid" / Int32ul, "uname" / String, "aname" / String, "n_uname" / Int32ul),
    m.Rauth: _body("aqid" / QidStruct),
    m.Tattach: _body(
        "fid" / Int32ul, "afid" / Int32ul, "uname" / String, "aname" / String,
        "n_uname" / Int32ul,
    ),
    m.Rattach: _body("qid" / QidStruct),
    m.Rlerror: _body("ecode" / Int32ul),
    m.Tflush: _body("oldtag" / Int16ul),
    m.Rflush: _EMPTY,
    m.Twalk: _body("fid" / Int32ul, "newfid" / Int32ul, "wnames" / _tuple_of(String)),
    m.Rwalk: _body("wqids" / _tuple_of(QidStruct)),
    m.Tread: _body("fid" / Int32ul, "offset" / Int64ul, "count" / Int32ul),
    m.Rread: _body("data" / CountedData),
    m.Twrite: _body("fid" / Int32ul, "offset" / Int64ul, "data" / CountedData),
    m.Rwrite: _body("count" / Int32ul),
    m.Tclunk: _body("fid" / Int32ul),
    m.Rclunk: _EMPTY,
    m.Tremove: _body("fid" / Int32ul),
    m.Rremove: _EMPTY,
    m.Tstatfs: _body("fid" / Int32ul),
    m.Rstatfs: _body(
        "type" / Int32ul, "bsize" / Int32ul, "blocks" / Int64ul, "bfree" / Int64ul,
        "bavail" / Int64ul, "files" / Int64ul, "ffree" / Int64ul, "fsid" / Int64ul,
        "namelen" / Int32ul,
    ),
    m.Tlopen: _body("fid" / Int32ul, "flags" / Int32ul),
    m.Rlopen: _body("qid" / QidStruct, "iounit" / Int32ul),
    m.Tlcreate: _body(
        "fid" / Int32ul, "name" / String, "flags" / Int32ul, "mode" / Int32ul, "gid" / Int32ul
    ),
    m.Rlcreate: _body("qid" / QidStruct, "iounit" / Int32ul),
    m.Tsymlink: _body("fid" / Int32ul, "name" / String, "symtgt" / String, "gid" / Int32ul),
    m.Rsymlink: _body("qid" / QidStruct),
    m.Tmknod: _body(
        "dfid" / Int32ul, "name" / String, "mode" / Int32ul, "major" / Int32ul,
        "minor" / Int32ul, "gid" / Int32ul,
    ),
    m.Rmknod: _body("qid" / QidStruct),
    m.Trename: _body("fid" / Int32ul, "dfid" / Int32ul, "name" / String),
    m.Rrename: _EMPTY,
    m.Treadlink: _body("fid" / Int32ul),
    m.Rreadlink: _body("target" / String),
    m.Tgetattr: _body("fid" / Int32ul, "request_mask" / Int64ul),
    m.Rgetattr: _body(*_GETATTR_FIELDS),
    m.Tsetattr: _body(
        "fid" / Int32ul, "valid" / Int32ul, "mode" / Int32ul, "uid" / Int32ul, "gid" / Int32ul,
        "size" / Int64ul, "atime_sec" / Int64ul, "atime_nsec" / Int64ul, "mtime_sec" / Int64ul,
        "mtime_nsec" / Int64ul,
    ),
    m.Rsetattr: _EMPTY,
    m.Txattrwalk: _body("fid" / Int32ul, "newfid" / Int32ul, "name" / String),
    m.Rxattrwalk: _body("size" / Int64ul),
    m.Txattrcreate: _body(
        "fid" / Int32ul, "name" / String, "attr_size" / Int64ul, "flags" / Int32ul
    ),
    m.Rxattrcreate: _EMPTY,
    m.Treaddir: _body("fid" / Int32ul, "offset" / Int64ul, "count" / Int32ul),
    m.Rreaddir: _body("entries" / CountedDirents),
    # Very old clients send only fid[4]: that means datasync 0.
    m.Tfsync: _body("fid" / Int32ul, "datasync" / Select(Int32ul, Computed(0))),
    m.Rfsync: _EMPTY,
    m.Tlock: _body(
        "fid" / Int32ul, "type" / Int8ul, "flags" / Int32ul, "start" / Int64ul,
        "length" / Int64ul, "proc_id" / Int32ul, "client_id" / String,
    ),
    m.Rlock: _body("status" / Int8ul),
    m.Tgetlock: _body(
        "fid" / Int32ul, "type" / Int8ul, "start" / Int64ul, "length" / Int64ul,
        "proc_id" / Int32ul, "client_id" / String,
    ),
    m.Rgetlock: _body(
        "type" / Int8ul, "start" / Int64ul, "length" / Int64ul, "proc_id" / Int32ul,
        "client_id" / String,
    ),
    m.Tlink: _body("dfid" / Int32ul, "fid" / Int32ul, "name" / String),
    m.Rlink: _EMPTY,
    m.Tmkdir: _body("dfid" / Int32ul, "name" / String, "mode" / Int32ul, "gid" / Int32ul),
    m.Rmkdir: _body("qid" / QidStruct),
    m.Trenameat: _body(
        "olddirfid" / Int32ul, "oldname" / String, "newdirfid" / Int32ul, "newname" / String
    ),
    m.Rrenameat: _EMPTY,
    m.Tunlinkat: _body("dirfid" / Int32ul, "name" / String, "flags" / Int32ul),
    m.Runlinkat: _EMPTY,
    m.Tqsfreaddir: _body("fid" / Int32ul, "offset" / Int64ul, "count" / Int32ul),
    m.Rqsfreaddir: _body("entries" / _counted_items(QsfDirentStruct)),
    m.Tqsfwatch: _body("count" / Int32ul),
    m.Rqsfwatch: _body("events" / _counted_items(QsfEventStruct)),
}

_FIELDS: dict[type[Message], tuple[str, ...]] = {
    cls: tuple(field.name for field in dataclasses.fields(cls))  # type: ignore[arg-type]
    for cls in BODIES
}


def encode_body(message: Message) -> bytes:
    """The body bytes of `message`; ValueError if a field does not fit the wire."""
    cls = type(message)
    try:
        body = BODIES[cls]
    except KeyError:
        raise ValueError(f"not a 9P2000.L message: {cls.__name__}") from None
    values = {name: getattr(message, name) for name in _FIELDS[cls]}
    try:
        return bytes(body.build(values))
    except (ConstructError, TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"cannot encode {cls.__name__}: {error}") from error


def decode_body(cls: type[Message], data: bytes | memoryview) -> Message:
    """The message of class `cls` whose body is `data`.

    ValueError (or TypeError, from the message's own checks) if the body is
    malformed: too short, too long, or inconsistent counts.
    """
    try:
        values = BODIES[cls].parse(bytes(data))
    except ConstructError as error:
        raise ValueError(f"malformed {cls.__name__} body: {error}") from None
    return cls(**{name: values[name] for name in _FIELDS[cls]})
