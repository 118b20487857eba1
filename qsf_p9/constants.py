"""9P2000.L numbers: message types, special values, flags and bit masks.

Values as in Linux include/net/9p/9p.h and fs/9p (see reference/9p2000L.md).
"""

from typing import Final

VERSION_9P2000L: Final = b"9P2000.L"
# 9P2000.L plus qsf's extensions (docs/PROTOCOL.md): offered in Tversion first.
VERSION_QSF: Final = b"9P2000.L.qsf1"

# Framing
HDRSZ: Final = 7  # size[4] type[1] tag[2]
IOHDRSZ: Final = 24  # room a client leaves around a Tread/Twrite payload
READDIRHDRSZ: Final = 24
MIN_MSIZE: Final = 4096  # Linux refuses a smaller negotiated msize
MAX_MSIZE: Final = 1024 * 1024  # trans=fd's limit, and ours
NOTAG: Final = 0xFFFF
NOFID: Final = 0xFFFFFFFF
NONUNAME: Final = 0xFFFFFFFF
MAXWELEM: Final = 16
MAX_STRING: Final = 0xFFFF  # a [s] field holds at most this many bytes

# Message types (T = request, R = T + 1)
TLERROR: Final = 6
RLERROR: Final = 7
TSTATFS: Final = 8
TLOPEN: Final = 12
TLCREATE: Final = 14
TSYMLINK: Final = 16
TMKNOD: Final = 18
TRENAME: Final = 20
TREADLINK: Final = 22
TGETATTR: Final = 24
TSETATTR: Final = 26
TXATTRWALK: Final = 30
TXATTRCREATE: Final = 32
TREADDIR: Final = 40
TFSYNC: Final = 50
TLOCK: Final = 52
TGETLOCK: Final = 54
TLINK: Final = 70
TMKDIR: Final = 72
TRENAMEAT: Final = 74
TUNLINKAT: Final = 76
TVERSION: Final = 100
TAUTH: Final = 102
TATTACH: Final = 104
TFLUSH: Final = 108
TWALK: Final = 110
TREAD: Final = 116
TWRITE: Final = 118
TCLUNK: Final = 120
TREMOVE: Final = 122
# qsf extensions (only in a session negotiated with VERSION_QSF)
TQSFREADDIR: Final = 200
TQSFWATCH: Final = 202

# Rqsfreaddir entry flags
QSF_DIRENT_ATTR: Final = 0x01  # attr holds the entry's attributes (else: walk to it)
QSF_DIRENT_XATTRS: Final = 0x02  # the file has extended attributes (else: none at all)

# Rqsfwatch event kinds
QSF_EV_CHANGED: Final = 1  # path's data changed
QSF_EV_ATTRIB: Final = 2  # path's attributes (or extended attributes) changed
QSF_EV_CREATED: Final = 3  # name appeared in directory dir (path: the new file, or 0)
QSF_EV_REMOVED: Final = 4  # name vanished from directory dir
QSF_EV_MOVED_FROM: Final = 5  # name left directory dir by a rename
QSF_EV_MOVED_TO: Final = 6  # name came into directory dir by a rename (path as CREATED)
QSF_EV_RESET: Final = 7  # events were lost: forget everything cached
QSF_EV_ENDED: Final = 8  # no more events will come: forget everything, stop caching long
QSF_EV_LAST: Final = QSF_EV_ENDED

# Qid types
QTDIR: Final = 0x80
QTAPPEND: Final = 0x40
QTEXCL: Final = 0x20
QTMOUNT: Final = 0x10
QTAUTH: Final = 0x08
QTTMP: Final = 0x04
QTSYMLINK: Final = 0x02
QTLINK: Final = 0x01
QTFILE: Final = 0x00

# Tlopen / Tlcreate flags (x86 Linux octal values; map bit by bit to host O_*)
L_O_RDONLY: Final = 0o0
L_O_WRONLY: Final = 0o1
L_O_RDWR: Final = 0o2
L_O_NOACCESS: Final = 0o3
L_O_ACCMODE: Final = 0o3
L_O_CREAT: Final = 0o100
L_O_EXCL: Final = 0o200
L_O_NOCTTY: Final = 0o400
L_O_TRUNC: Final = 0o1000
L_O_APPEND: Final = 0o2000
L_O_NONBLOCK: Final = 0o4000
L_O_DSYNC: Final = 0o10000
L_O_FASYNC: Final = 0o20000
L_O_DIRECT: Final = 0o40000
L_O_LARGEFILE: Final = 0o100000
L_O_DIRECTORY: Final = 0o200000
L_O_NOFOLLOW: Final = 0o400000
L_O_NOATIME: Final = 0o1000000
L_O_CLOEXEC: Final = 0o2000000
L_O_SYNC: Final = 0o4000000

# Tgetattr request_mask / Rgetattr valid
GETATTR_MODE: Final = 0x0001
GETATTR_NLINK: Final = 0x0002
GETATTR_UID: Final = 0x0004
GETATTR_GID: Final = 0x0008
GETATTR_RDEV: Final = 0x0010
GETATTR_ATIME: Final = 0x0020
GETATTR_MTIME: Final = 0x0040
GETATTR_CTIME: Final = 0x0080
GETATTR_INO: Final = 0x0100
GETATTR_SIZE: Final = 0x0200
GETATTR_BLOCKS: Final = 0x0400
GETATTR_BTIME: Final = 0x0800
GETATTR_GEN: Final = 0x1000
GETATTR_DATA_VERSION: Final = 0x2000
GETATTR_BASIC: Final = 0x07FF
GETATTR_ALL: Final = 0x3FFF

# Tsetattr valid
SETATTR_MODE: Final = 0x001
SETATTR_UID: Final = 0x002
SETATTR_GID: Final = 0x004
SETATTR_SIZE: Final = 0x008
SETATTR_ATIME: Final = 0x010
SETATTR_MTIME: Final = 0x020
SETATTR_CTIME: Final = 0x040
SETATTR_ATIME_SET: Final = 0x080
SETATTR_MTIME_SET: Final = 0x100

# Tlock / Tgetlock
LOCK_TYPE_RDLCK: Final = 0
LOCK_TYPE_WRLCK: Final = 1
LOCK_TYPE_UNLCK: Final = 2
LOCK_FLAGS_BLOCK: Final = 1
LOCK_FLAGS_RECLAIM: Final = 2
LOCK_SUCCESS: Final = 0
LOCK_BLOCKED: Final = 1
LOCK_ERROR: Final = 2
LOCK_GRACE: Final = 3

# Tunlinkat flags
AT_REMOVEDIR: Final = 0x200

# Txattrcreate flags
XATTR_CREATE: Final = 1
XATTR_REPLACE: Final = 2

# Treaddir entry types (d_type)
DT_UNKNOWN: Final = 0
DT_FIFO: Final = 1
DT_CHR: Final = 2
DT_DIR: Final = 4
DT_BLK: Final = 6
DT_REG: Final = 8
DT_LNK: Final = 10
DT_SOCK: Final = 12
