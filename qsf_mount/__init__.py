"""qvm-mount-folder (qvm-mount) and mount.qvm: the client qube's commands.

- cli: arguments, the qrexec handshake, backend choice, --persist/--forget/--list
- request: a mount request's fields, their validation, the exit codes
- system: the side effects (qrexec calls, the socketpair channel, programs)
- mounts: the mount table's qsf shares and the qvm:// source names
- persistent: the shares recorded for start-up ($XDG_CONFIG_HOME/qsf/shares.json)
- startup: mounting them at session start (bounded back-off, notifications)
- helper: mount.qvm, mount(8)'s helper for type qvm
"""
