"""FUSE benchmark: qsf-fuse on qsf-server (with and without qsf's extensions), sshfs on
sftp-server, and the local directory.

    python -m bench.fuse_bench [--size tiny|small|medium] [--rounds N] [--json FILE]

Both network file systems run over a plain byte pipe to a local server, the
shape of a qrexec channel and without ssh's crypto: qsf-fuse --exec
"python -m qsf_server DIR" (a socketpair), and sshfs -o passive joined to
/usr/lib/openssh/sftp-server by socat. Every workload runs on the three
targets in one round, in an order that rotates from round to round, and the
median over the rounds is reported with the ratio qsf : sshfs (above 1: qsf is
better). "qsf" offers the extensions (docs/PROTOCOL.md), "qsf-writeback" adds
-o writeback (the kernel caches writes), "qsf-plain" mounts with -o noqsf
(plain 9P2000.L, today's caching). Needs root (drop_caches for
the cold rows) and /dev/fuse.

Rows: sequential write (dd, conv=fsync) in 1 MiB and in 4 KiB writes, and
read (dd, cold cache) in MB/s;
create N empty files and rm them; `ls -l` of a directory of M files (made in
the export directly) with cold caches, then again (warm); untar of a source
tree, `find -ls` of it (every entry stat-ed) with cold caches, `rm -rf` of it;
fio 4k random reads (psync, QD1, O_DIRECT) in IOPS; coherence: a program in
the export creates, changes and deletes files and the median time until the
mount shows each change (capped at COHERENCE_CAP s); and the CPU seconds the
client and the server processes used over the whole round.
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
TARGETS = ("qsf", "qsf-writeback", "qsf-plain", "sshfs", "local")
# The coherence row waits at most this long for a change to show.
COHERENCE_CAP = 2.0
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


@dataclass(frozen=True)
class Size:
    nbytes: int  # sequential write/read
    files: int  # create / rm
    listed: int  # ls -l
    rounds: int
    fio_seconds: int
    changes: int  # coherence samples


SIZES = {
    "tiny": Size(nbytes=16 * MIB, files=200, listed=300, rounds=1, fio_seconds=2, changes=3),
    "small": Size(nbytes=128 * MIB, files=2000, listed=10000, rounds=3, fio_seconds=5,
                  changes=5),
    "medium": Size(nbytes=512 * MIB, files=2000, listed=10000, rounds=5, fio_seconds=10,
                   changes=20),
}


@dataclass(frozen=True)
class Row:
    name: str
    unit: str
    higher_is_better: bool


ROWS = (
    Row("seq write", "MB/s", True),
    Row("4k writes", "MB/s", True),
    Row("seq read (cold)", "MB/s", True),
    Row("create files", "s", False),
    Row("rm files", "s", False),
    Row("ls -l (cold)", "s", False),
    Row("ls -l (warm)", "s", False),
    Row("untar tree", "s", False),
    Row("find + stat (cold)", "s", False),
    Row("rm -rf tree", "s", False),
    Row("4k random read", "IOPS", True),
    Row("coherence", "s", False),
    Row("client CPU", "s", False),
    Row("server CPU", "s", False),
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


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and of its waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


@dataclass
class Processes:
    """The client and server processes of a mount, for their CPU time."""

    client: list[int]
    server: list[int]

    def cpu(self) -> tuple[float, float]:
        def total(pids: list[int]) -> float:
            seconds = 0.0
            for pid in pids:
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    seconds += cpu_seconds(pid)
            return seconds
        return total(self.client), total(self.server)


@contextlib.contextmanager
def mounted_qsf(export: Path, mnt: Path, options: str = "rw") -> Iterator[Processes]:
    server = shlex.join([sys.executable, "-m", "qsf_server", str(export)])
    client = Path(sys.executable).parent / "qsf-fuse"
    process = subprocess.Popen([str(client), "--foreground", "-o", options, "--exec", server,
                                str(mnt)], stderr=subprocess.DEVNULL)
    try:
        wait_mounted(mnt, process, "qsf-fuse")
        yield Processes([process.pid], children(process.pid))
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
        process.wait(30)


@contextlib.contextmanager
def mounted_sshfs(export: Path, mnt: Path, scratch: Path) -> Iterator[Processes]:
    wrapper = scratch / "sshfs-wrapper.sh"
    wrapper.write_text(f"#!/bin/sh\nexec sshfs -f -o passive :{shlex.quote(str(export))} "
                       f"{shlex.quote(str(mnt))}\n")
    wrapper.chmod(0o755)
    process = subprocess.Popen(["socat", f"EXEC:{SFTP_SERVER}", f"EXEC:{wrapper}"],
                               stderr=subprocess.DEVNULL)
    try:
        wait_mounted(mnt, process, "sshfs")
        # socat runs sftp-server and the wrapper, which became sshfs.
        kids = children(process.pid)
        servers = [pid for pid in kids if b"sftp-server" in _cmdline(pid)]
        yield Processes([pid for pid in kids if pid not in servers], servers)
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False)
        process.wait(30)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


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


def coherence(root: Path, export: Path, changes: int) -> float:
    """Median seconds until a change made in the export shows through root."""
    place, seen = export / "coherence", root / "coherence"
    place.mkdir()
    os.listdir(seen)
    delays: list[float] = []

    def shown(check: Callable[[], bool]) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < COHERENCE_CAP:
            with contextlib.suppress(OSError):
                if check():
                    break
            time.sleep(0.002)
        return time.perf_counter() - start

    for index in range(changes):
        name = f"c{index}"
        assert not (seen / name).exists()
        (place / name).write_bytes(b"one")
        delays.append(shown(lambda: (seen / name).exists()))  # noqa: B023
        (place / name).write_bytes(b"second")
        delays.append(shown(lambda: (seen / name).stat().st_size == 6))  # noqa: B023
        (place / name).unlink()
        delays.append(shown(lambda: not (seen / name).exists()))  # noqa: B023
    shutil.rmtree(place)
    return statistics.median(delays)


def workloads(root: Path, export: Path, size: Size, tree: Path) -> dict[str, float]:
    """One round of every row on root (export: the same directory on the server side)."""
    results: dict[str, float] = {}
    data = root / "seq.bin"
    count = size.nbytes // MIB
    results["seq write"] = size.nbytes / MIB / timed(lambda: run(
        ["dd", "if=/dev/zero", f"of={data}", "bs=1M", f"count={count}", "conv=fsync"]))
    small = root / "small-writes.bin"
    results["4k writes"] = size.nbytes / 8 / MIB / timed(lambda: run(
        ["dd", "if=/dev/zero", f"of={small}", "bs=4k", f"count={size.nbytes // 8 // 4096}",
         "conv=fsync"]))
    small.unlink()
    drop_caches()
    results["seq read (cold)"] = size.nbytes / MIB / timed(lambda: run(
        ["dd", f"if={data}", "of=/dev/null", "bs=1M"]))

    files = root / "files"
    files.mkdir()

    def create() -> None:
        for index in range(size.files):
            os.close(os.open(files / f"file-{index:05d}", os.O_CREAT | os.O_WRONLY, 0o644))

    results["create files"] = timed(create)
    results["rm files"] = timed(lambda: run(["rm", "-r", str(files)]))

    listed = export / "listed"
    listed.mkdir()
    for index in range(size.listed):
        (listed / f"entry-{index:05d}").write_bytes(b"x" * (index % 100))
    drop_caches()
    results["ls -l (cold)"] = timed(lambda: run(["ls", "-l", str(root / "listed")]))
    results["ls -l (warm)"] = timed(lambda: run(["ls", "-l", str(root / "listed")]))
    shutil.rmtree(listed)

    untarred = root / "tree"
    untarred.mkdir()
    results["untar tree"] = timed(lambda: (run(["tar", "-xf", str(tree), "-C", str(untarred)]),
                                           run(["sync", "-f", str(untarred)])))
    drop_caches()
    results["find + stat (cold)"] = timed(lambda: run(["find", str(untarred), "-ls"]))
    results["rm -rf tree"] = timed(lambda: run(["rm", "-rf", str(untarred)]))

    output = run(["fio", "--name=randread", f"--filename={data}", "--rw=randread", "--bs=4k",
                  "--ioengine=psync", "--iodepth=1", "--direct=1", "--time_based",
                  f"--runtime={size.fio_seconds}", "--output-format=json"])
    results["4k random read"] = float(json.loads(output)["jobs"][0]["read"]["iops"])
    data.unlink()
    results["coherence"] = coherence(root, export, size.changes) if root != export else 0.0
    return results


def measure(size: Size, rounds: int) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {t: {r.name: [] for r in ROWS} for t in TARGETS}
    scratch = Path(tempfile.mkdtemp(prefix="qsf-fuse-bench-"))
    try:
        tree = make_tree_tar(scratch)
        for round_index in range(rounds):
            shift = round_index % len(TARGETS)
            order = TARGETS[shift:] + TARGETS[:shift]
            for target in order:
                base = scratch / f"{target}-{round_index}"
                export, mnt = base / "export", base / "mnt"
                export.mkdir(parents=True)
                mnt.mkdir()
                context: contextlib.AbstractContextManager[Processes | None]
                if target == "qsf":
                    context = mounted_qsf(export, mnt)
                elif target == "qsf-writeback":
                    context = mounted_qsf(export, mnt, "writeback")
                elif target == "qsf-plain":
                    context = mounted_qsf(export, mnt, "noqsf")
                elif target == "sshfs":
                    context = mounted_sshfs(export, mnt, scratch)
                else:
                    context = contextlib.nullcontext(None)
                with context as processes:
                    root = export if processes is None else mnt
                    values = workloads(root, export, size, tree)
                    client_cpu, server_cpu = processes.cpu() if processes else (0.0, 0.0)
                    values["client CPU"], values["server CPU"] = client_cpu, server_cpu
                    for name, value in values.items():
                        results[target][name].append(value)
                shutil.rmtree(base)
                print(f"round {round_index + 1}/{rounds}: {target} done", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def _show(value: float, unit: str) -> str:
    return f"{value:.2f} s" if unit == "s" else f"{value:,.0f} {unit}"


def _ratio(ours: float, theirs: float, higher_is_better: bool) -> str:
    if ours <= 0 or theirs <= 0:
        return "-"
    return f"{ours / theirs if higher_is_better else theirs / ours:.2f}"


def table(results: dict[str, dict[str, list[float]]], size: Size) -> str:
    lines = [
        f"| workload ({size.files} files, ls of {size.listed}, {size.nbytes // MIB} MiB) "
        "| qsf-fuse | qsf-fuse writeback | qsf-fuse plain 9P | sshfs | local | qsf : sshfs "
        "| writeback : sshfs | plain : sshfs | qsf : local |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        medians = {t: statistics.median(results[t][row.name]) for t in TARGETS}
        shown = {t: _show(medians[t], row.unit) for t in TARGETS}
        better = row.higher_is_better
        lines.append(
            f"| {row.name} | {shown['qsf']} | {shown['qsf-writeback']} | {shown['qsf-plain']} "
            f"| {shown['sshfs']} | {shown['local']} "
            f"| {_ratio(medians['qsf'], medians['sshfs'], better)} "
            f"| {_ratio(medians['qsf-writeback'], medians['sshfs'], better)} "
            f"| {_ratio(medians['qsf-plain'], medians['sshfs'], better)} "
            f"| {_ratio(medians['qsf'], medians['local'], better)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--rounds", type=int, help="rounds (default: the size's)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    for program in ("sshfs", "socat", "fio", "fusermount"):
        if shutil.which(program) is None:
            parser.error(f"{program} is missing")
    if os.geteuid() != 0:
        parser.error("needs root (drop_caches)")
    size = SIZES[args.size]
    rounds = args.rounds or size.rounds
    results = measure(size, rounds)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{when}, {platform.node()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
          f"size {args.size} ({rounds} rounds, medians), load {os.getloadavg()[0]:.1f}")
    print(table(results, size))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
