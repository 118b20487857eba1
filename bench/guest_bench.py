"""Kernel-client benchmark in the QEMU guest: qsf-server against diod, side by side.

    python -m bench.guest_bench [--size tiny|small|medium] [--kernel 6.12|6.1] [--markdown]

Boots the test rig's guest (tests/guest: Debian's kernel under QEMU TCG) and
mounts a server running on the host with the guest's v9fs client through
qsf_kmount (cache=mmap, its default), over the rig's channel: the kernel's
socket -> qsf_sim.mux guest end -> virtio-serial port -> mux host end -> the
server's stdin/stdout. Configurations: qsf and diod at msize 64 KiB (diod's
cap), qsf at 1 MiB. Rounds are interleaved (qsf, diod, qsf 1 MiB, qsf, ...);
each round mounts afresh and runs, as the qube's user (uid 1000): dd write with
fsync, dd read after dropping the guest's caches, N creates, `ls -l` of them,
untar + sync of a fixed Python stdlib folder, `rm -rf` of it. Times are taken
in the guest; the server's CPU (utime + stime from /proc/PID/stat, 100% = one
core) on the host. Medians are reported, with ratios qsf/diod of the rates.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.server import cpu_seconds, machine, server_argv

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "guest"), str(REPO / "tests")]

import support  # noqa: E402  (tests/support.py)
from guest_kernels import KERNELS, prepare  # noqa: E402

if TYPE_CHECKING:
    from conftest import Rig

KIB = 1024
MIB = 1024 * KIB
STDLIB = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"


@dataclass(frozen=True)
class Size:
    write_mib: int  # dd write, then read back cold
    files: int  # created, then listed with ls -l
    tree: str  # stdlib folder untarred, then removed
    rounds: int


SIZES = {
    "tiny": Size(write_mib=2, files=10, tree="json", rounds=1),
    "small": Size(write_mib=32, files=100, tree="email", rounds=3),
    "medium": Size(write_mib=128, files=500, tree="xml", rounds=5),
}


@dataclass(frozen=True)
class Config:
    server: str  # "qsf" or "diod"
    msize: int

    @property
    def label(self) -> str:
        unit = f"{self.msize // MIB} MiB" if self.msize >= MIB else f"{self.msize // KIB} KiB"
        return f"{self.server} @ {unit}"


CONFIGS = (Config("qsf", 64 * KIB), Config("diod", 64 * KIB), Config("qsf", MIB))
WORKLOADS = ("write+fsync", "cold read", "create", "ls -l", "untar+sync", "rm -rf")


@dataclass
class Sample:
    config: str
    server: str
    workload: str
    seconds: float
    amount: float  # MB, files or entries done in `seconds`
    unit: str
    server_cpu_percent: float

    @property
    def rate(self) -> float:
        return self.amount / self.seconds if self.seconds > 0 else 0.0


class BenchError(Exception):
    """A mount or a workload failed in the guest (message says which)."""


@dataclass(frozen=True)
class Tree:
    data: bytes  # an uncompressed tar of the folder
    files: int
    nbytes: int


def make_tree(name: str) -> Tree:
    """A deterministic tar of STDLIB/name (sorted, no __pycache__, fixed owner and time)."""
    source = STDLIB / name
    if not source.is_dir():
        raise SystemExit(f"{source} is missing: the tree for the untar workload")
    buffer = io.BytesIO()
    files = nbytes = 0
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(source.rglob("*")):
            if "__pycache__" in path.parts or not (path.is_dir() or path.is_file()):
                continue
            info = tar.gettarinfo(str(path), arcname=str(Path("tree") / path.relative_to(source)))
            info.uid = info.gid = support.QUBE_UID
            info.uname = info.gname = ""
            info.mtime = 0
            if path.is_file():
                files += 1
                nbytes += info.size
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return Tree(buffer.getvalue(), files, nbytes)


def server_command(config: Config, export: Path) -> list[str]:
    """qsf-server as the qube's user (as in a qube), diod as root (it needs root)."""
    argv = server_argv(config.server, export, config.msize)
    return support.as_user(argv) if config.server == "qsf" else argv


@contextmanager
def export_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="qsf-guest-bench-", dir="/var/tmp"))
    try:
        os.chmod(path, 0o755)
        os.chown(path, support.QUBE_UID, support.QUBE_GID)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def timed(rig: Rig, script: str, mnt: str, *, input: bytes = b"", timeout: float) -> float:
    """Seconds `script` took in the guest as the qube's user, timed in the guest."""
    wrapped = f's=$(date +%s%N); {{ {script.strip()} ; }} >/dev/null || exit 1; ' \
              f'e=$(date +%s%N); echo $(( e - s ))'
    result = rig.guest.run(["sh", "-c", wrapped], uid=support.QUBE_UID, cwd=mnt, input=input,
                           timeout=timeout)
    if result.rc != 0 or result.timed_out:
        raise BenchError(f"{script.strip()!r} failed in the guest (rc {result.rc}"
                         f"{', timed out' if result.timed_out else ''}): {result.err[-2000:]}")
    return int(result.out.split()[-1]) / 1e9


def run_round(rig: Rig, config: Config, size: Size, tree: Tree, timeout: float) -> list[Sample]:
    """Mount `config`'s server in the guest, run every workload once, unmount."""
    with export_dir() as export:
        service = rig.new_service(server_command(config, export))
        mnt = rig.mountpoint()
        options = f"msize={config.msize}" + (f",aname={export}" if config.server == "diod" else "")
        mounted = rig.kernel_mount(service, mnt, options=options)
        if mounted.rc != 0:
            raise BenchError(f"mounting {config.label} failed: {mounted.err[-2000:]}")
        (server,) = rig.hub.processes[service]
        steps = [
            ("write+fsync", f"dd if=/dev/zero of=big bs=1M count={size.write_mib} conv=fsync",
             size.write_mib * MIB / 1e6, "MB/s"),
            ("cold read", "dd if=big of=/dev/null bs=1M", size.write_mib * MIB / 1e6, "MB/s"),
            ("create", f"mkdir many && for i in $(seq {size.files}); do : > many/f$i; done",
             size.files, "files/s"),
            ("ls -l", "ls -l many", size.files, "entries/s"),
            ("untar+sync", "tar -xf - && sync", tree.files, "files/s"),
            ("rm -rf", "rm -rf tree", tree.files, "files/s"),
        ]
        samples = []
        try:
            for workload, script, amount, unit in steps:
                if workload == "cold read":
                    rig.guest.sh("sync && echo 3 > /proc/sys/vm/drop_caches").check()
                before = cpu_seconds(server.pid)
                seconds = timed(rig, script, mnt, timeout=timeout,
                                input=tree.data if workload == "untar+sync" else b"")
                cpu = cpu_seconds(server.pid) - before
                samples.append(Sample(config.label, config.server, workload, seconds, amount,
                                      unit, 100 * cpu / seconds if seconds else 0.0))
        finally:
            unmounted = rig.guest.run(["umount", mnt], timeout=timeout)
            if unmounted.rc != 0:
                rig.guest.run(["umount", "-l", mnt])
            try:
                server.wait(timeout=30)
            finally:
                if server.poll() is None:
                    server.kill()
                    server.wait()
            rig.guest.run(["rmdir", mnt])
        if unmounted.rc != 0:
            raise BenchError(f"umount {mnt} failed: {unmounted.err}")
        if server.returncode != 0:
            raise BenchError(f"{config.label} exited {server.returncode} after umount")
    return samples


def run(rig: Rig, size: Size, rounds: int, *, timeout: float = 900,
        progress: bool = False) -> list[Sample]:
    """Every configuration `rounds` times, interleaved; all samples."""
    tree = make_tree(size.tree)
    samples = []
    for round_number in range(rounds):
        for config in CONFIGS:
            started = time.monotonic()
            samples += run_round(rig, config, size, tree, timeout)
            if progress:
                print(f"round {round_number + 1}/{rounds} {config.label}: "
                      f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return samples


def summarise(samples: list[Sample]) -> list[Sample]:
    """The median of every (config, workload) over the rounds (time and server CPU)."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.config, sample.workload), []).append(sample)
    return [Sample(group[0].config, group[0].server, group[0].workload,
                   statistics.median(s.seconds for s in group), group[0].amount, group[0].unit,
                   statistics.median(s.server_cpu_percent for s in group))
            for group in groups.values()]


def ratio(sample: Sample, medians: list[Sample]) -> str:
    """sample's rate over diod's (64 KiB) on the same workload: above 1, qsf is faster."""
    for other in medians:
        if other.server == "diod" and other.workload == sample.workload and other.rate:
            return f"{sample.rate / other.rate:.2f}"
    return "-"


def spread(sample: Sample, samples: list[Sample]) -> str:
    """The fastest and slowest time of sample's (config, workload) over the rounds."""
    times = [s.seconds for s in samples
             if s.config == sample.config and s.workload == sample.workload]
    return f"{min(times):.2f}-{max(times):.2f} s"


def table(medians: list[Sample], samples: list[Sample], markdown: bool) -> str:
    header = ["workload", "server", "time", "min-max", "rate", "qsf/diod", "server CPU"]
    rows = [[sample.workload, sample.config, f"{sample.seconds:.2f} s", spread(sample, samples),
             f"{sample.rate:,.1f} {sample.unit}",
             ratio(sample, medians) if sample.server == "qsf" else "",
             f"{sample.server_cpu_percent:.0f}%"]
            for workload in WORKLOADS for sample in medians if sample.workload == workload]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     for row in [header, *rows])


parser = argparse.ArgumentParser(
    prog="python -m bench.guest_bench", description=__doc__.split("\n\n")[0] if __doc__ else None,
    epilog=__doc__.split("\n\n", 2)[2] if __doc__ else None,
    formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--size", choices=SIZES, default="small", help="default: small")
parser.add_argument("--rounds", type=int, help="override the size's number of rounds")
parser.add_argument("--kernel", choices=[k.label for k in KERNELS], default="6.12",
                    help="guest kernel (default 6.12, Debian 13's)")
parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
parser.add_argument("--json", type=Path, help="also write every sample and the medians here")


def main(args: list[str] | None = None) -> int:
    options = parser.parse_args(args)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the rig chowns exports and diod needs root")
    for program in ("qemu-system-x86_64", "diod", "sudo"):
        if shutil.which(program) is None and shutil.which(program, path="/usr/sbin") is None:
            raise SystemExit(f"{program} is missing (scripts/install.sh)")
    from conftest import start_rig, stop_rig  # tests/guest/conftest.py: the rig's setup

    size = SIZES[options.size]
    rounds = options.rounds or size.rounds
    spec = next(k for k in KERNELS if k.label == options.kernel)
    kernel = prepare(spec)
    workdir = Path(tempfile.mkdtemp(prefix="qsf-guest-bench-rig-"))
    try:
        rig = start_rig(kernel, workdir)
        try:
            samples = run(rig, size, rounds, progress=True)
        finally:
            stop_rig(rig)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    medians = summarise(samples)
    print(f"# guest kernel {kernel.version}, size {options.size} (dd {size.write_mib} MiB, "
          f"{size.files} files, tree {size.tree}: {make_tree(size.tree).files} files), "
          f"{rounds} rounds, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# host: {machine()}, load average {os.getloadavg()[0]:.1f}")
    print(table(medians, samples, options.markdown))
    if options.json:
        options.json.write_text(json.dumps(
            {"samples": [asdict(s) for s in samples], "medians": [asdict(s) for s in medians]},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
