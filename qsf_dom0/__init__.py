"""dom0: authorization decisions, qrexec policy, prompts."""
