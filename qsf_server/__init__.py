"""The qsf file server: 9P2000.L over a byte channel, confined to one folder.

Modules, one job each:
- cli: the `qsf-server [--read-only] [--msize N] DIR` command (stdin/stdout).
- connection: the trio loop (reader, request tasks and Tflush, one writer).
- session: the answer to each request (protocol checks, fids, then fs).
- fids: the reference-counted fid table and its limits.
- fs: the confined, descriptor-relative file system operations.
- sysfs: system calls the os module lacks (openat2, linkat, utimensat, OFD locks).
- qids: qid paths that never alias across devices, and non-zero versions.
- connect: the qsf.ConnectToFolder service, which asks dom0 and then execs the server.
"""
