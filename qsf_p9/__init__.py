"""Sans-I/O 9P2000.L: constants, message types and the codec.

Bytes in, messages out (`Decoder`); messages in, bytes out (`encode`). No I/O
happens here: the server, the FUSE client, the fuzzers and the tests all drive
the same code.
"""
