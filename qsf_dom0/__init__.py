"""dom0: authorization decisions, qrexec policy, prompts.

- wire: bounded reading and validation of the services' text lines
- decisions: the pure rules, (request, stored decisions, now) -> outcome
- store: the decision file (versioned JSON, flock, atomic replace, upstream import)
- policy: the generated 79-qsf-*.policy files (validated, locked, atomic)
- prompt: the Prompt interface and the terminal prompt
- limits: one open prompt per client and a few per minute, across processes
- config: where all of it lives (the Qubes paths by default)
- services: qsf.AuthorizeFolderAccess and qsf.QueryFolderAuthorization
"""
