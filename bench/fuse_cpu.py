"""CPU per operation of qsf-fuse and qsf-server, with and without qsf's extensions.

    python -m bench.fuse_cpu [--files N]

Mounts an export of N files (made in the export directly) both ways, one after
the other, runs each operation over all N files and reports the CPU time
(utime + stime from /proc) the client and the server used per file. Needs
root (drop_caches) and /dev/fuse.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.fuse_bench import Processes, drop_caches, mounted_qsf


def _operations(mnt: Path, count: int) -> list[tuple[str, Callable[[], None]]]:
    listed = mnt / "listed"

    def ls_cold() -> None:
        drop_caches()
        _run(["ls", "-l", str(listed)])

    def stat_cold() -> None:
        drop_caches()
        for index in range(count):
            os.lstat(listed / f"e{index}")

    def create() -> None:
        for index in range(count):
            os.close(os.open(mnt / "new" / f"n{index}", os.O_CREAT | os.O_WRONLY, 0o644))

    def unlink() -> None:
        for index in range(count):
            os.unlink(mnt / "new" / f"n{index}")

    return [("ls -l (cold)", ls_cold), ("ls -l (warm)", lambda: _run(["ls", "-l", str(listed)])),
            ("stat (cold)", stat_cold), ("create", create), ("unlink", unlink)]


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def measure(count: int, options: str) -> dict[str, tuple[float, float]]:
    scratch = Path(tempfile.mkdtemp(prefix="qsf-fuse-cpu-"))
    try:
        export, mnt = scratch / "export", scratch / "mnt"
        (export / "listed").mkdir(parents=True)
        (export / "new").mkdir()
        mnt.mkdir()
        for index in range(count):
            (export / "listed" / f"e{index}").write_bytes(b"x")
        results: dict[str, tuple[float, float]] = {}
        with mounted_qsf(export, mnt, options) as processes:
            assert isinstance(processes, Processes)
            for name, operation in _operations(mnt, count):
                client_before, server_before = processes.cpu()
                operation()
                client_after, server_after = processes.cpu()
                results[name] = ((client_after - client_before) / count,
                                 (server_after - server_before) / count)
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (drop_caches)")
    with_ext = measure(args.files, "rw")
    plain = measure(args.files, "noqsf")
    print(f"CPU microseconds per file ({args.files} files), load {os.getloadavg()[0]:.1f}")
    print("| operation | client, qsf | server, qsf | client, plain 9P | server, plain 9P |")
    print("|---|---|---|---|---|")
    for name in with_ext:
        (client, server), (pclient, pserver) = with_ext[name], plain[name]
        print(f"| {name} | {client * 1e6:.0f} | {server * 1e6:.0f} | {pclient * 1e6:.0f} "
              f"| {pserver * 1e6:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
