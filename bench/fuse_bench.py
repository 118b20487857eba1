"""FUSE benchmark: qsf-fuse on qsf-server, sshfs on sftp-server, and the local directory.

    python -m bench.fuse_bench [--size tiny|small|medium] [--markdown] [--json FILE]

Both network file systems run over a plain byte pipe to a local server, the
shape of a qrexec channel and without ssh's crypto: qsf-fuse --exec
"python -m qsf_server DIR" (a socketpair), and sshfs -o passive joined to
/usr/lib/openssh/sftp-server by socat. Every workload runs on the three
targets in one round, in an order that rotates from round to round, and the
median over the rounds is reported with the ratio qsf : sshfs (above 1: qsf is
better). Needs root (drop_caches for the cold rows) and /dev/fuse.

Rows: sequential write (dd, conv=fsync) and read (dd, cold cache) in MB/s;
create N empty files; `ls -l` of those N files with cold caches; untar of a
source tree and `rm -rf` of it; fio 4k random reads (psync, QD1, O_DIRECT)
in IOPS.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
TARGETS = ("qsf", "sshfs", "local")
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


@dataclass(frozen=True)
class Size:
    nbytes: int  # sequential write/read
    files: int  # create / ls -l
    rounds: int
    fio_seconds: int


SIZES = {
    "tiny": Size(nbytes=16 * MIB, files=200, rounds=1, fio_seconds=2),
    "small": Size(nbytes=128 * MIB, files=2000, rounds=3, fio_seconds=5),
    "medium": Size(nbytes=512 * MIB, files=2000, rounds=5, fio_seconds=10),
}


@dataclass(frozen=True)
class Row:
    name: str
    unit: str
    higher_is_better: bool


ROWS = (
    Row("seq write", "MB/s", True),
    Row("seq read (cold)", "MB/s", True),
    Row("create files", "s", False),
    Row("ls -l (cold)", "s", False),
    Row("untar tree", "s", False),
    Row("rm -rf tree", "s", False),
    Row("4k random read", "IOPS", True),
)


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def wait_mounted(path: Path, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while not os.path.ismount(path):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not mount on {path}")
        time.sleep(0.05)


@contextlib.contextmanager
def mounted_qsf(export: Path, mnt: Path) -> Iterator[Path]:
    server = shlex.join([sys.executable, "-m", "qsf_server", str(export)])
    client = Path(sys.executable).parent / "qsf-fuse"
    process = subprocess.Popen([str(client), "--foreground", "--exec", server, str(mnt)],
                               stderr=subprocess.DEVNULL)
    try:
        wait_mounted(mnt, process, "qsf-fuse")
        yield mnt
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
        process.wait(30)


@contextlib.contextmanager
def mounted_sshfs(export: Path, mnt: Path, scratch: Path) -> Iterator[Path]:
    wrapper = scratch / "sshfs-wrapper.sh"
    wrapper.write_text(f"#!/bin/sh\nexec sshfs -f -o passive :{shlex.quote(str(export))} "
                       f"{shlex.quote(str(mnt))}\n")
    wrapper.chmod(0o755)
    process = subprocess.Popen(["socat", f"EXEC:{SFTP_SERVER}", f"EXEC:{wrapper}"],
                               stderr=subprocess.DEVNULL)
    try:
        wait_mounted(mnt, process, "sshfs")
        yield mnt
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
        process.wait(30)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run(argv: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout


def make_tree_tar(scratch: Path) -> Path:
    """A source tree (Python's own library modules) as one tar, about 1500 entries."""
    archive = scratch / "tree.tar"
    library = Path(os.__file__).parent
    with tarfile.open(archive, "w") as tar:
        count = 0
        for sub in ("email", "json", "http", "asyncio", "unittest", "xml", "concurrent",
                    "importlib", "logging", "urllib", "multiprocessing", "ctypes",
                    "tomllib", "wsgiref", "sqlite3", "dbm", "html", "curses", "lib2to3"):
            if (library / sub).exists() and count < 1500:
                tar.add(library / sub, arcname=sub,
                        filter=lambda info: None if "__pycache__" in info.name else info)
                count = len(tar.getmembers())
    return archive


def workloads(root: Path, size: Size, tree: Path) -> dict[str, float]:
    """One round of every row on root; returns the row values."""
    results: dict[str, float] = {}
    data = root / "seq.bin"
    count = size.nbytes // MIB
    results["seq write"] = size.nbytes / MIB / timed(lambda: run(
        ["dd", "if=/dev/zero", f"of={data}", "bs=1M", f"count={count}", "conv=fsync"]))
    drop_caches()
    results["seq read (cold)"] = size.nbytes / MIB / timed(lambda: run(
        ["dd", f"if={data}", "of=/dev/null", "bs=1M"]))

    files = root / "files"
    files.mkdir()

    def create() -> None:
        for index in range(size.files):
            os.close(os.open(files / f"file-{index:05d}", os.O_CREAT | os.O_WRONLY, 0o644))

    results["create files"] = timed(create)
    drop_caches()
    results["ls -l (cold)"] = timed(lambda: run(["ls", "-l", str(files)]))

    untarred = root / "tree"
    untarred.mkdir()
    results["untar tree"] = timed(lambda: (run(["tar", "-xf", str(tree), "-C", str(untarred)]),
                                           run(["sync", "-f", str(untarred)])))
    results["rm -rf tree"] = timed(lambda: run(["rm", "-rf", str(untarred)]))

    output = run(["fio", "--name=randread", f"--filename={data}", "--rw=randread", "--bs=4k",
                  "--ioengine=psync", "--iodepth=1", "--direct=1", "--time_based",
                  f"--runtime={size.fio_seconds}", "--output-format=json"])
    results["4k random read"] = float(json.loads(output)["jobs"][0]["read"]["iops"])
    shutil.rmtree(files)
    data.unlink()
    return results


def measure(size: Size) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {t: {r.name: [] for r in ROWS} for t in TARGETS}
    scratch = Path(tempfile.mkdtemp(prefix="qsf-fuse-bench-"))
    try:
        tree = make_tree_tar(scratch)
        for round_index in range(size.rounds):
            order = TARGETS[round_index % 3:] + TARGETS[:round_index % 3]
            for target in order:
                base = scratch / f"{target}-{round_index}"
                export, mnt = base / "export", base / "mnt"
                export.mkdir(parents=True)
                mnt.mkdir()
                if target == "qsf":
                    context: contextlib.AbstractContextManager[Path] = mounted_qsf(export, mnt)
                elif target == "sshfs":
                    context = mounted_sshfs(export, mnt, scratch)
                else:
                    context = contextlib.nullcontext(export)
                with context as root:
                    for name, value in workloads(root, size, tree).items():
                        results[target][name].append(value)
                shutil.rmtree(base)
                print(f"round {round_index + 1}/{size.rounds}: {target} done", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def _show(value: float, unit: str) -> str:
    return f"{value:.2f} s" if unit == "s" else f"{value:,.0f} {unit}"


def table(results: dict[str, dict[str, list[float]]], size: Size) -> str:
    lines = [
        f"| workload ({size.files} files, {size.nbytes // MIB} MiB) | qsf-fuse | sshfs | local "
        "| qsf : sshfs |",
        "|---|---|---|---|---|",
    ]
    for row in ROWS:
        medians = {t: statistics.median(results[t][row.name]) for t in TARGETS}
        ratio = (medians["qsf"] / medians["sshfs"] if row.higher_is_better
                 else medians["sshfs"] / medians["qsf"])

        shown = {t: _show(medians[t], row.unit) for t in TARGETS}
        lines.append(f"| {row.name} | {shown['qsf']} | {shown['sshfs']} | {shown['local']} "
                     f"| {ratio:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    for program in ("sshfs", "socat", "fio", "fusermount"):
        if shutil.which(program) is None:
            parser.error(f"{program} is missing")
    if os.geteuid() != 0:
        parser.error("needs root (drop_caches)")
    size = SIZES[args.size]
    results = measure(size)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{when}, {platform.node()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
          f"size {args.size} ({size.rounds} rounds, medians)")
    print(table(results, size))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
