"""Sans-I/O 9P2000.L: constants, message types and the codec.

Bytes in, messages out (`Decoder`); messages in, bytes out (`encode`). No I/O
happens here: the server, the FUSE client, the fuzzers and the tests all drive
the same code.
"""

from .codec import DIRENT_OVERHEAD, EOF, NEED_DATA, RREAD_OVERHEAD, Decoder, encode
from .errors import FramingError, MessageError, ProtocolError
from .messages import REPLIES, REPLY_TO, REQUESTS, Dirent, Message, Qid

__all__ = [
    "DIRENT_OVERHEAD",
    "EOF",
    "NEED_DATA",
    "REPLIES",
    "REPLY_TO",
    "REQUESTS",
    "RREAD_OVERHEAD",
    "Decoder",
    "Dirent",
    "FramingError",
    "Message",
    "MessageError",
    "ProtocolError",
    "Qid",
    "encode",
]
