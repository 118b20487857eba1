"""The dialog side of qsf, installed in every GUI domain (dom0 or sys-gui).

Modules, one job each:
  protocol  the qsf.AskFolderAccess request and answer, validated as untrusted (stdlib)
  logic     what the dialog shows and answers, without widgets (stdlib)
  dialog    the GTK 3 window (folder_access.ui) driven by the logic
  agent     `qsf-ask-agent`: the per-session agent serving the socket service

May import only the stdlib and gi (ARCHITECTURE.md).
"""
