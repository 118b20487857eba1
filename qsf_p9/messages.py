"""Every 9P2000.L message as a frozen, slotted dataclass.

Field names follow reference/9p2000L.md. Strings are bytes (names need not be
UTF-8); bulk payloads (Twrite.data, Rread.data) may be memoryviews. Integer
ranges are checked when a message is encoded; the checks here are the ones a
well-formed message needs beyond its field widths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from . import constants as c

Buffer = bytes | bytearray | memoryview


class Qid(NamedTuple):
    type: int
    version: int
    path: int


class Dirent(NamedTuple):
    """One Treaddir entry; offset is the cookie of the position after it."""

    qid: Qid
    offset: int
    type: int
    name: bytes


def _check_string(value: bytes, what: str) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) > c.MAX_STRING:
        raise ValueError(f"{what} longer than {c.MAX_STRING} bytes")


class Message:
    """Base of all messages; TYPE is the wire type number."""

    __slots__ = ()
    TYPE: ClassVar[int]
    # Names of the bytes fields that must fit a [s] string.
    STRINGS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self.STRINGS:
            _check_string(getattr(self, name), name)


@dataclass(frozen=True, slots=True)
class Tversion(Message):
    TYPE = c.TVERSION
    STRINGS = ("version",)
    msize: int
    version: bytes


@dataclass(frozen=True, slots=True)
class Rversion(Message):
    TYPE = c.TVERSION + 1
    STRINGS = ("version",)
    msize: int
    version: bytes


@dataclass(frozen=True, slots=True)
class Tauth(Message):
    TYPE = c.TAUTH
    STRINGS = ("uname", "aname")
    afid: int
    uname: bytes
    aname: bytes
    n_uname: int


@dataclass(frozen=True, slots=True)
class Rauth(Message):
    TYPE = c.TAUTH + 1
    aqid: Qid


@dataclass(frozen=True, slots=True)
class Tattach(Message):
    TYPE = c.TATTACH
    STRINGS = ("uname", "aname")
    fid: int
    afid: int
    uname: bytes
    aname: bytes
    n_uname: int


@dataclass(frozen=True, slots=True)
class Rattach(Message):
    TYPE = c.TATTACH + 1
    qid: Qid


@dataclass(frozen=True, slots=True)
class Rlerror(Message):
    TYPE = c.RLERROR
    ecode: int


@dataclass(frozen=True, slots=True)
class Tflush(Message):
    TYPE = c.TFLUSH
    oldtag: int


@dataclass(frozen=True, slots=True)
class Rflush(Message):
    TYPE = c.TFLUSH + 1


@dataclass(frozen=True, slots=True)
class Twalk(Message):
    TYPE = c.TWALK
    fid: int
    newfid: int
    wnames: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.wnames) > c.MAXWELEM:
            raise ValueError(f"more than {c.MAXWELEM} names in a walk")
        for name in self.wnames:
            _check_string(name, "wname")


@dataclass(frozen=True, slots=True)
class Rwalk(Message):
    TYPE = c.TWALK + 1
    wqids: tuple[Qid, ...]

    def __post_init__(self) -> None:
        if len(self.wqids) > c.MAXWELEM:
            raise ValueError(f"more than {c.MAXWELEM} qids in a walk reply")


@dataclass(frozen=True, slots=True)
class Tread(Message):
    TYPE = c.TREAD
    fid: int
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class Rread(Message):
    TYPE = c.TREAD + 1
    data: Buffer


@dataclass(frozen=True, slots=True)
class Twrite(Message):
    TYPE = c.TWRITE
    fid: int
    offset: int
    data: Buffer


@dataclass(frozen=True, slots=True)
class Rwrite(Message):
    TYPE = c.TWRITE + 1
    count: int


@dataclass(frozen=True, slots=True)
class Tclunk(Message):
    TYPE = c.TCLUNK
    fid: int


@dataclass(frozen=True, slots=True)
class Rclunk(Message):
    TYPE = c.TCLUNK + 1


@dataclass(frozen=True, slots=True)
class Tremove(Message):
    TYPE = c.TREMOVE
    fid: int


@dataclass(frozen=True, slots=True)
class Rremove(Message):
    TYPE = c.TREMOVE + 1


@dataclass(frozen=True, slots=True)
class Tstatfs(Message):
    TYPE = c.TSTATFS
    fid: int


@dataclass(frozen=True, slots=True)
class Rstatfs(Message):
    TYPE = c.TSTATFS + 1
    type: int
    bsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    fsid: int
    namelen: int


@dataclass(frozen=True, slots=True)
class Tlopen(Message):
    TYPE = c.TLOPEN
    fid: int
    flags: int


@dataclass(frozen=True, slots=True)
class Rlopen(Message):
    TYPE = c.TLOPEN + 1
    qid: Qid
    iounit: int


@dataclass(frozen=True, slots=True)
class Tlcreate(Message):
    TYPE = c.TLCREATE
    STRINGS = ("name",)
    fid: int
    name: bytes
    flags: int
    mode: int
    gid: int


@dataclass(frozen=True, slots=True)
class Rlcreate(Message):
    TYPE = c.TLCREATE + 1
    qid: Qid
    iounit: int


@dataclass(frozen=True, slots=True)
class Tsymlink(Message):
    TYPE = c.TSYMLINK
    STRINGS = ("name", "symtgt")
    fid: int
    name: bytes
    symtgt: bytes
    gid: int


@dataclass(frozen=True, slots=True)
class Rsymlink(Message):
    TYPE = c.TSYMLINK + 1
    qid: Qid


@dataclass(frozen=True, slots=True)
class Tmknod(Message):
    TYPE = c.TMKNOD
    STRINGS = ("name",)
    dfid: int
    name: bytes
    mode: int
    major: int
    minor: int
    gid: int


@dataclass(frozen=True, slots=True)
class Rmknod(Message):
    TYPE = c.TMKNOD + 1
    qid: Qid


@dataclass(frozen=True, slots=True)
class Trename(Message):
    TYPE = c.TRENAME
    STRINGS = ("name",)
    fid: int
    dfid: int
    name: bytes


@dataclass(frozen=True, slots=True)
class Rrename(Message):
    TYPE = c.TRENAME + 1


@dataclass(frozen=True, slots=True)
class Treadlink(Message):
    TYPE = c.TREADLINK
    fid: int


@dataclass(frozen=True, slots=True)
class Rreadlink(Message):
    TYPE = c.TREADLINK + 1
    STRINGS = ("target",)
    target: bytes


@dataclass(frozen=True, slots=True)
class Tgetattr(Message):
    TYPE = c.TGETATTR
    fid: int
    request_mask: int


@dataclass(frozen=True, slots=True)
class Rgetattr(Message):
    TYPE = c.TGETATTR + 1
    valid: int
    qid: Qid
    mode: int
    uid: int
    gid: int
    nlink: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int
    ctime_sec: int
    ctime_nsec: int
    btime_sec: int
    btime_nsec: int
    gen: int
    data_version: int


@dataclass(frozen=True, slots=True)
class Tsetattr(Message):
    TYPE = c.TSETATTR
    fid: int
    valid: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int


@dataclass(frozen=True, slots=True)
class Rsetattr(Message):
    TYPE = c.TSETATTR + 1


@dataclass(frozen=True, slots=True)
class Txattrwalk(Message):
    TYPE = c.TXATTRWALK
    STRINGS = ("name",)
    fid: int
    newfid: int
    name: bytes


@dataclass(frozen=True, slots=True)
class Rxattrwalk(Message):
    TYPE = c.TXATTRWALK + 1
    size: int


@dataclass(frozen=True, slots=True)
class Txattrcreate(Message):
    TYPE = c.TXATTRCREATE
    STRINGS = ("name",)
    fid: int
    name: bytes
    attr_size: int
    flags: int


@dataclass(frozen=True, slots=True)
class Rxattrcreate(Message):
    TYPE = c.TXATTRCREATE + 1


@dataclass(frozen=True, slots=True)
class Treaddir(Message):
    TYPE = c.TREADDIR
    fid: int
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class Rreaddir(Message):
    TYPE = c.TREADDIR + 1
    entries: tuple[Dirent, ...]

    def __post_init__(self) -> None:
        for entry in self.entries:
            _check_string(entry.name, "dirent name")


@dataclass(frozen=True, slots=True)
class Tfsync(Message):
    TYPE = c.TFSYNC
    fid: int
    datasync: int


@dataclass(frozen=True, slots=True)
class Rfsync(Message):
    TYPE = c.TFSYNC + 1


@dataclass(frozen=True, slots=True)
class Tlock(Message):
    TYPE = c.TLOCK
    STRINGS = ("client_id",)
    fid: int
    type: int
    flags: int
    start: int
    length: int
    proc_id: int
    client_id: bytes


@dataclass(frozen=True, slots=True)
class Rlock(Message):
    TYPE = c.TLOCK + 1
    status: int


@dataclass(frozen=True, slots=True)
class Tgetlock(Message):
    TYPE = c.TGETLOCK
    STRINGS = ("client_id",)
    fid: int
    type: int
    start: int
    length: int
    proc_id: int
    client_id: bytes


@dataclass(frozen=True, slots=True)
class Rgetlock(Message):
    TYPE = c.TGETLOCK + 1
    STRINGS = ("client_id",)
    type: int
    start: int
    length: int
    proc_id: int
    client_id: bytes


@dataclass(frozen=True, slots=True)
class Tlink(Message):
    TYPE = c.TLINK
    STRINGS = ("name",)
    dfid: int
    fid: int
    name: bytes


@dataclass(frozen=True, slots=True)
class Rlink(Message):
    TYPE = c.TLINK + 1


@dataclass(frozen=True, slots=True)
class Tmkdir(Message):
    TYPE = c.TMKDIR
    STRINGS = ("name",)
    dfid: int
    name: bytes
    mode: int
    gid: int


@dataclass(frozen=True, slots=True)
class Rmkdir(Message):
    TYPE = c.TMKDIR + 1
    qid: Qid


@dataclass(frozen=True, slots=True)
class Trenameat(Message):
    TYPE = c.TRENAMEAT
    STRINGS = ("oldname", "newname")
    olddirfid: int
    oldname: bytes
    newdirfid: int
    newname: bytes


@dataclass(frozen=True, slots=True)
class Rrenameat(Message):
    TYPE = c.TRENAMEAT + 1


@dataclass(frozen=True, slots=True)
class Tunlinkat(Message):
    TYPE = c.TUNLINKAT
    STRINGS = ("name",)
    dirfid: int
    name: bytes
    flags: int


@dataclass(frozen=True, slots=True)
class Runlinkat(Message):
    TYPE = c.TUNLINKAT + 1


# -- qsf extensions (docs/PROTOCOL.md) ---------------------------------------


class QsfDirent(NamedTuple):
    """One Rqsfreaddir entry: a Dirent, flags (QSF_DIRENT_*) and the attributes.

    attr is meaningful only with QSF_DIRENT_ATTR (otherwise all zeros)."""

    qid: Qid
    offset: int
    type: int
    name: bytes
    flags: int
    attr: Rgetattr


class QsfEvent(NamedTuple):
    """One change: kind (QSF_EV_*), the file's qid.path, its directory's, a name."""

    kind: int
    path: int
    dir: int
    name: bytes


@dataclass(frozen=True, slots=True)
class Tqsfreaddir(Message):
    TYPE = c.TQSFREADDIR
    fid: int
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class Rqsfreaddir(Message):
    TYPE = c.TQSFREADDIR + 1
    entries: tuple[QsfDirent, ...]

    def __post_init__(self) -> None:
        for entry in self.entries:
            _check_string(entry.name, "dirent name")


@dataclass(frozen=True, slots=True)
class Tqsfwatch(Message):
    TYPE = c.TQSFWATCH
    count: int  # the most bytes of events the reply may carry


@dataclass(frozen=True, slots=True)
class Rqsfwatch(Message):
    TYPE = c.TQSFWATCH + 1
    events: tuple[QsfEvent, ...]

    def __post_init__(self) -> None:
        for event in self.events:
            _check_string(event.name, "event name")


REQUESTS: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Tversion, Tauth, Tattach, Tflush, Twalk, Tread, Twrite, Tclunk, Tremove,
        Tstatfs, Tlopen, Tlcreate, Tsymlink, Tmknod, Trename, Treadlink, Tgetattr,
        Tsetattr, Txattrwalk, Txattrcreate, Treaddir, Tfsync, Tlock, Tgetlock, Tlink,
        Tmkdir, Trenameat, Tunlinkat, Tqsfreaddir, Tqsfwatch,
    )
}

REPLIES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Rversion, Rauth, Rattach, Rlerror, Rflush, Rwalk, Rread, Rwrite, Rclunk,
        Rremove, Rstatfs, Rlopen, Rlcreate, Rsymlink, Rmknod, Rrename, Rreadlink,
        Rgetattr, Rsetattr, Rxattrwalk, Rxattrcreate, Rreaddir, Rfsync, Rlock,
        Rgetlock, Rlink, Rmkdir, Rrenameat, Runlinkat, Rqsfreaddir, Rqsfwatch,
    )
}

# The reply type a request expects when it succeeds (Rlerror is always possible).
REPLY_TO: dict[type[Message], type[Message]] = {
    request: REPLIES[request.TYPE + 1] for request in REQUESTS.values()
}
