"""A stand-in for qrexec on one Linux machine (tests and demo only)."""
