"""Benchmarks against peers (diod, sshfs), side by side in one run."""
