"""Server benchmark: qsf-server against diod (and qfsd), side by side, same load generator.

    python -m bench.server [--size tiny|small|medium|large] [--markdown] [--json FILE]
    QFSD=/path/to/qfsd python -m bench.server --servers qsf,diod,qfsd

Each server runs on one end of a socketpair (the shape of a qrexec channel)
and is driven by bench.ninep_load, which keeps --depth requests in flight.
Workloads: small operations (walk + getattr + clunk of existing files),
sequential read and sequential write; diod and qsf at msize 64 KiB, qsf at
1 MiB too (diod caps msize at 64 KiB). Upstream's Rust server, qfsd
(qubes-shared-folders: `qfsd READFD WRITEFD EXPORT`), joins them at 64 KiB
when --qfsd or $QFSD names its binary. Rounds are interleaved (qsf, diod, qsf,
diod, ...) and the median of each is reported, with the CPU time the generator
and the server used (100% = one core), so that the reader sees which one was
the bottleneck. The read file is in the page cache for both servers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from qsf_p9 import constants as c

from .ninep_load import Connection, LoadError, LoadResult

KIB = 1024
MIB = 1024 * KIB
READ_FID = 1
WRITE_FID = 2
SMALL_FILES = 100


@dataclass(frozen=True)
class Size:
    operations: int  # small-op chains per round
    nbytes: int  # bytes read and written per round
    rounds: int


SIZES = {
    "tiny": Size(operations=2_000, nbytes=8 * MIB, rounds=1),
    "small": Size(operations=20_000, nbytes=128 * MIB, rounds=3),
    "medium": Size(operations=100_000, nbytes=512 * MIB, rounds=5),
    "large": Size(operations=300_000, nbytes=2048 * MIB, rounds=7),
}


@dataclass(frozen=True)
class Config:
    """A server at one msize."""

    server: str  # "qsf", "diod" or "qfsd"
    msize: int
    workloads: tuple[str, ...]

    @property
    def label(self) -> str:
        unit = f"{self.msize // MIB} MiB" if self.msize >= MIB else f"{self.msize // KIB} KiB"
        return f"{self.server} @ {unit}"


@dataclass
class Sample:
    config: str
    server: str
    msize: int
    workload: str
    unit: str
    rate: float
    client_cpu_percent: float
    server_cpu_percent: float


WORKLOADS = ("small ops", "seq read", "seq write")
UNITS = {"small ops": "ops/s", "seq read": "MB/s", "seq write": "MB/s"}


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_argv(server: str, export: Path, msize: int, profile: Path | None = None,
                qfsd: str | None = None) -> list[str]:
    """The command serving `export` on stdin/stdout (qsf under cProfile if `profile`)."""
    if server == "qfsd":
        if not qfsd:
            raise SystemExit("qfsd: give its binary with --qfsd PATH or $QFSD")
        return [qfsd, "0", "1", str(export)]
    if server == "qsf" and profile is not None:
        return [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "qsf_server",
                "--msize", str(msize), str(export)]
    if server == "qsf":
        program = shutil.which("qsf-server", path=os.path.dirname(sys.executable)) or \
            shutil.which("qsf-server")
        if program is None:
            raise SystemExit("qsf-server not found: install the project (scripts/install.sh)")
        return [program, "--msize", str(msize), str(export)]
    program = shutil.which("diod") or shutil.which("diod", path="/usr/sbin:/sbin")
    if program is None:
        raise SystemExit("diod not found: apt-get install diod (scripts/install.sh)")
    argv = [program, "-f", "-n", "-c", "/dev/null", "-L", "stderr", "-e", str(export),
            "--rfdno", "0", "--wfdno", "1"]
    if os.geteuid() != 0:
        argv += ["-S", "-U", "nobody"]  # diod needs this to run unprivileged
    return argv


class Server:
    """One server process on one end of a socketpair; we hold the other end."""

    def __init__(self, server: str, export: Path, msize: int, log: Path,
                 profile: Path | None = None, qfsd: str | None = None) -> None:
        self.log = log
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with theirs, open(log, "ab") as log_file:
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                server_argv(server, export, msize, profile, qfsd),
                stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=log_file, close_fds=True,
                # diod sometimes crashes when its channel closes: its core
                # dump lands in the temporary log folder, removed at the end.
                cwd=log.parent,
            )
        self.sock = ours
        self.connection = Connection(ours)

    def stop(self) -> int | None:
        """Close the channel and wait for the server to exit; its exit code, None if killed."""
        self.sock.close()
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


def run_workload(server: Server, workload: str, export: Path, size: Size,
                 depth: int, names: list[bytes]) -> LoadResult:
    connection = server.connection
    if workload == "small ops":
        return connection.small_ops(names, size.operations, depth)
    if workload == "seq read":
        connection.open(READ_FID, b"read.bin", c.L_O_RDONLY)
        result = connection.read(READ_FID, size.nbytes, depth)
        connection.clunk(READ_FID)
        return result
    name = f"write-{os.getpid()}.bin"
    connection.create(WRITE_FID, name.encode(), c.L_O_WRONLY | c.L_O_TRUNC)
    result = connection.write(WRITE_FID, size.nbytes, depth)
    connection.clunk(WRITE_FID)
    written = (export / name).stat().st_size
    (export / name).unlink()
    if written != size.nbytes:
        raise LoadError(f"the written file has {written} bytes, expected {size.nbytes}")
    return result


def measure(config: Config, export: Path, size: Size, depth: int, names: list[bytes],
            log_dir: Path, profile: Path | None = None,
            qfsd: str | None = None) -> list[Sample]:
    """One round of config's workloads on a fresh server process."""
    server = Server(config.server, export, config.msize, log_dir / f"{config.server}.log",
                    profile, qfsd)
    samples = []
    try:
        aname = str(export).encode()
        server.connection.handshake(config.msize, aname)
        for workload in config.workloads:
            os.sync()  # earlier writes must not be flushed during this workload
            before = cpu_seconds(server.process.pid)
            result = run_workload(server, workload, export, size, depth, names)
            server_cpu = cpu_seconds(server.process.pid) - before
            rate = (result.operations if workload == "small ops" else result.nbytes / 1e6)
            samples.append(Sample(
                config.label, config.server, config.msize, workload, UNITS[workload],
                rate / result.seconds, 100 * result.client_cpu / result.seconds,
                100 * server_cpu / result.seconds,
            ))
    except (LoadError, OSError) as error:
        raise SystemExit(f"{config.label}: {error}\nserver log:\n{server.log_tail()}") from None
    finally:
        status = server.stop()
    if status != 0 and config.server == "qsf":  # diod's exit at EOF is not ours to judge
        raise SystemExit(f"{config.label}: the server exited with {status} at EOF\n"
                         f"server log:\n{server.log_tail()}")
    return samples


@contextlib.contextmanager
def make_export(parent: str | None, size: Size) -> Iterator[tuple[Path, list[bytes]]]:
    """A folder with SMALL_FILES small files and a read file of size.nbytes, in the cache."""
    with tempfile.TemporaryDirectory(prefix="qsf-bench-", dir=parent) as work:
        export = Path(work) / "export"
        export.mkdir()
        names = []
        for number in range(SMALL_FILES):
            name = f"file{number:03d}"
            (export / name).write_bytes(b"x" * 100)
            names.append(name.encode())
        block = os.urandom(MIB)
        with open(export / "read.bin", "wb") as read_file:
            for offset in range(0, size.nbytes, MIB):
                read_file.write(block[: min(MIB, size.nbytes - offset)])
        with open(export / "read.bin", "rb") as read_file:
            while read_file.read(MIB):  # into the page cache
                pass
        yield export, names


def configs(servers: list[str], workloads: tuple[str, ...]) -> list[Config]:
    """Every server at 64 KiB, qsf also at 1 MiB for the bulk workloads."""
    chosen = [Config(server, 64 * KIB, workloads) for server in servers]
    bulk = tuple(w for w in workloads if w != "small ops")
    if "qsf" in servers and bulk:
        chosen.append(Config("qsf", MIB, bulk))
    return chosen


def summarise(samples: list[Sample]) -> list[Sample]:
    """The median of every (config, workload) over the rounds."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.config, sample.workload), []).append(sample)
    medians = []
    for group in groups.values():
        first = group[0]
        medians.append(Sample(
            first.config, first.server, first.msize, first.workload, first.unit,
            statistics.median(s.rate for s in group),
            statistics.median(s.client_cpu_percent for s in group),
            statistics.median(s.server_cpu_percent for s in group),
        ))
    return medians


def ratio(sample: Sample, medians: list[Sample]) -> str:
    """sample's rate over diod's at 64 KiB on the same workload."""
    for other in medians:
        if other.server == "diod" and other.workload == sample.workload and other.rate:
            return f"{sample.rate / other.rate:.2f}"
    return "-"


def table(medians: list[Sample], markdown: bool) -> str:
    header = ["workload", "server", "rate", "/diod", "client CPU", "server CPU"]
    rows = []
    for workload in WORKLOADS:
        for sample in medians:
            if sample.workload != workload:
                continue
            rows.append([
                workload, sample.config, f"{sample.rate:,.0f} {sample.unit}",
                ratio(sample, medians) if sample.server != "diod" else "",
                f"{sample.client_cpu_percent:.0f}%", f"{sample.server_cpu_percent:.0f}%",
            ])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     for row in [header, *rows])


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


parser = argparse.ArgumentParser(
    prog="python -m bench.server", description=__doc__.split("\n\n")[0] if __doc__ else None,
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
parser.add_argument("--size", choices=SIZES, default="medium",
                    help="work per round and number of rounds (tiny: seconds, for CI)")
parser.add_argument("--rounds", type=int, help="override the size's number of rounds")
parser.add_argument("--depth", type=int, default=32, help="requests in flight (default 32)")
parser.add_argument("--servers", help="comma-separated, from qsf, diod and qfsd (default: "
                    "qsf,diod, and qfsd when its binary is given)")
parser.add_argument("--qfsd", default=os.environ.get("QFSD"), metavar="PATH",
                    help="upstream's qfsd binary (default: $QFSD)")
parser.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated, from: {', '.join(WORKLOADS)}")
parser.add_argument("--dir", help="where to make the exported folder (default: $TMPDIR)")
parser.add_argument("--profile", type=Path, metavar="PREFIX",
                    help="run qsf-server under cProfile (slower!), write PREFIX-<config>-<round>"
                         ".prof and print the top functions")
parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
parser.add_argument("--json", type=Path, help="also write every sample and the medians here")


def main(args: list[str] | None = None) -> int:
    options = parser.parse_args(args)
    default = "qsf,diod,qfsd" if options.qfsd else "qsf,diod"
    servers = [s for s in (options.servers or default).split(",") if s]
    workloads = tuple(w for w in options.workloads.split(",") if w)
    if not servers or not set(servers) <= {"qsf", "diod", "qfsd"}:
        parser.error("--servers takes some of qsf, diod and qfsd")
    if "qfsd" in servers and not (options.qfsd and os.access(options.qfsd, os.X_OK)):
        parser.error(f"qfsd: {options.qfsd or 'no binary given'} is not an executable "
                     "(--qfsd PATH or $QFSD)")
    if not workloads or not set(workloads) <= set(WORKLOADS):
        parser.error(f"--workloads takes some of: {', '.join(WORKLOADS)}")
    if options.depth < 1 or options.depth > 0xFFFE:
        parser.error("--depth must be between 1 and 65534")
    size = SIZES[options.size]
    rounds = options.rounds or size.rounds
    chosen = configs(servers, workloads)
    samples: list[Sample] = []
    profiles: list[Path] = []
    progress: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    with make_export(options.dir, size) as (export, names), \
            tempfile.TemporaryDirectory(prefix="qsf-bench-logs-") as logs:
        for number in range(rounds):
            for config in chosen:  # interleaved: every config once per round
                progress(f"round {number + 1}/{rounds}: {config.label}")
                profile = None
                if options.profile and config.server == "qsf":
                    profile = Path(f"{options.profile}-{config.msize // KIB}k-{number + 1}.prof")
                    profiles.append(profile)
                samples += measure(config, export, size, options.depth, names, Path(logs),
                                   profile, options.qfsd)
    medians = summarise(samples)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m bench.server " + " ".join(args if args is not None else sys.argv[1:])
    print(f"{when}; {machine()}")
    print(f"{command}; {rounds} round(s), depth {options.depth}, {size.operations} small ops and"
          f" {size.nbytes // MIB} MiB per workload and round; medians")
    print(table(medians, options.markdown))
    for profile in profiles:
        print(f"\n{profile}: top functions by own time")
        pstats.Stats(str(profile), stream=sys.stdout).sort_stats("tottime").print_stats(25)
    if options.json:
        options.json.write_text(json.dumps({
            "date": when, "machine": machine(), "command": command, "rounds": rounds,
            "depth": options.depth, "samples": [asdict(s) for s in samples],
            "medians": [asdict(s) for s in medians],
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
