"""qvm-mount-folder: the client qube's command.

- cli: arguments, the qrexec handshake, backend choice, exit codes
- system: the side effects (qrexec calls, the socketpair channel, programs)
- mounts: the mount table's qsf shares and the qvm:// source names
"""
