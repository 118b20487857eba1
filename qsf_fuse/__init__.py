"""The FUSE backend: a userspace 9P2000.L client mounted with pyfuse3."""
