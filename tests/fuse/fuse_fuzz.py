"""The hostile-server fuzzer: real programs on a qsf-fuse mount whose server lies.

One session: a small tree is served by a real server (qsf-server or diod)
behind fuzz_proxy.py, which corrupts replies as its seed decides; qsf-fuse
mounts it with a short request timeout, ordinary programs run on the mount,
then `fusermount -u`. What the server does to the programs' results is its
business (wrong contents, EIO); what it must not do is checked (`Session.check`):

- no program runs past the budget its calls' timeouts allow (PROGRAM_LIMIT),
  unless the proxy made a listing endless (then it is killed, and must die);
- the client lives until unmounted, logs no traceback and exits 0 within
  EXIT_LIMIT of `fusermount -u`, which always succeeds; the proxy saw the
  channel close, and neither it nor the server outlives the client;
- the client's peak memory stays under RSS_LIMIT;
- what the kernel shows of the mount has values in range (VALIDATE).

    python tests/fuse/fuse_fuzz.py --server qsf|diod [--sessions N] [--first-seed S]
    python tests/fuse/fuse_fuzz.py --server qsf --seed S     # replay one session

The suite runs a few fixed seeds (test_fuse_fuzz.py); `make fuzz-fuse` the long run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from fuse_mounts import Server, abort_connection, is_mounted  # noqa: E402

REQUEST_TIMEOUT = 1.5
# Calls one program may make that each wait a full timeout: the proxy delays at
# most 3 replies a session, a dead server costs a call plus its flush.
PROGRAM_LIMIT = 6 * REQUEST_TIMEOUT + 10.0
MOUNT_LIMIT = 45.0  # the handshake may wait 30 s (client.HANDSHAKE_TIMEOUT)
EXIT_LIMIT = 8.0
RSS_LIMIT_KIB = 200 * 1024
PROXY = HERE / "fuzz_proxy.py"

# $M is the mount point. Each runs on its own: a failure is the server's right.
PROGRAMS = (
    "ls -lR $M",
    "cat $M/tree/a $M/tree/sub/d",
    "cp $M/tree/a $M/copy",
    "dd if=/dev/urandom of=$M/dd bs=4k count=16 conv=fsync",
    "mkdir $M/newdir && mkdir -p $M/newdir/x/y",
    "mv $M/tree/b $M/newdir/b2",
    "ln -s tree/a $M/link && readlink $M/link",
    "getfattr -d -m - $M/tree/a",
    "setfattr -n user.fuzz -v value $M/tree/c",
    "find $M -name '*d*'",
    "du -a $M",
    "chmod 600 $M/tree/c && stat $M/tree/c",
    "truncate -s 1000 $M/tree/sub/e",
    "df $M",
    "rm -rf $M/newdir",
    "tail -c 100 $M/tree/a",
)

# Runs on the mount after the programs: every value the kernel got must be in range.
VALIDATE = r"""
import os, stat, sys
bad = []
types = {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK,
         stat.S_IFCHR, stat.S_IFBLK}
def check(path):
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_IFMT(st.st_mode) not in types: bad.append(f"{path}: mode {st.st_mode:o}")
    if st.st_size < 0: bad.append(f"{path}: size {st.st_size}")
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID) and os.path.ismount(sys.argv[1]):
        pass  # nosuid makes them harmless
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
            if not 0 < len(os.fsencode(target)) <= 4095: bad.append(f"{path}: target")
        except OSError:
            pass
    try:
        for name in os.listxattr(path, follow_symlinks=False):
            try:
                if len(os.getxattr(path, name, follow_symlinks=False)) > 65536:
                    bad.append(f"{path}: xattr {name}")
            except OSError:
                pass
    except OSError:
        pass
    return st
def walk(path, depth):
    st = check(path)
    if st is None or not stat.S_ISDIR(st.st_mode) or depth > 8:
        return
    try:
        names = os.listdir(path)
    except OSError:
        return
    if len(names) != len(set(names)): bad.append(f"{path}: a name listed twice")
    for name in names[:200]:
        raw = os.fsencode(name)
        if not raw or b"/" in raw or b"\0" in raw or len(raw) > 255 or name in (".", ".."):
            bad.append(f"{path}: name {raw!r}")
            continue
        walk(os.path.join(path, name), depth + 1)
walk(sys.argv[1], 0)
print("\n".join(bad))
"""


class SessionFailure(AssertionError):
    pass


@dataclass
class Session:
    server: Server
    seed: int
    workdir: Path
    problems: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    report: dict[str, object] = field(default_factory=dict)
    mounted: bool = False
    peak_rss_kib: int = 0
    # A fixed plan for the proxy (fuzz_proxy.py --plan) and programs run at once
    # instead of one by one: the regression tests.
    plan: str | None = None
    parallel: tuple[str, ...] = ()
    overran: list[str] = field(default_factory=list)  # killed at PROGRAM_LIMIT

    @property
    def export(self) -> Path:
        return self.workdir / "export"

    @property
    def mnt(self) -> Path:
        return self.workdir / "mnt"

    @property
    def log(self) -> Path:
        return self.workdir / "client.log"

    def make_tree(self) -> None:
        rng = random.Random(self.seed)
        tree = self.export / "tree"
        (tree / "sub").mkdir(parents=True)
        self.mnt.mkdir()
        (tree / "a").write_bytes(rng.randbytes(12000))
        (tree / "b").write_bytes(b"bee\n")
        (tree / "c").write_bytes(b"sea\n")
        (tree / "sub" / "d").write_bytes(rng.randbytes(3000))
        (tree / "sub" / "e").write_bytes(b"")
        (tree / "sub" / "link").symlink_to("../a")
        for i in range(20):
            (tree / "sub" / f"f{i:02}").write_bytes(b"x" * i)
        with contextlib.suppress(OSError):  # the export's file system may lack user xattrs
            os.setxattr(tree / "a", "user.colour", b"blue")

    def start(self) -> subprocess.Popen[bytes]:
        command, server_options = self.server.command(self.export)
        proxy = shlex.join([sys.executable, str(PROXY), "--seed", str(self.seed),
                            "--timeout", str(REQUEST_TIMEOUT), "--report",
                            str(self.workdir / "proxy.json"),
                            *(["--plan", self.plan] if self.plan else []),
                            "--", *shlex.split(command)])
        options = [*server_options, f"request_timeout={REQUEST_TIMEOUT}"]
        argv = [str(Path(sys.executable).parent / "qsf-fuse"), "--foreground",
                "-o", ",".join(options), "--exec", proxy, str(self.mnt)]
        with open(self.log, "wb") as log:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)

    def run(self) -> None:
        self.make_tree()
        started = time.monotonic()
        client = self.start()
        children: list[int] = []
        try:
            while not is_mounted(self.mnt):
                if client.poll() is not None:
                    break
                if time.monotonic() - started > MOUNT_LIMIT:
                    self.problems.append(f"neither mounted nor exited in {MOUNT_LIMIT} s")
                    break
                time.sleep(0.02)
            self.timings["mount"] = time.monotonic() - started
            self.mounted = is_mounted(self.mnt)
            children = _descendants(client.pid)
            if self.mounted:
                self.exercise(client)
                self.peak_rss_kib = _peak_rss(client.pid)
                if self.peak_rss_kib > RSS_LIMIT_KIB:
                    self.problems.append(f"peak RSS {self.peak_rss_kib} KiB")
            self.unmount(client)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
            if is_mounted(self.mnt):
                subprocess.run(["fusermount", "-u", "-z", str(self.mnt)], check=False)
            deadline = time.monotonic() + EXIT_LIMIT
            for pid in children:
                while _running(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if _running(pid):
                    self.problems.append(f"process {pid} ({_comm(pid)}) outlived the client")
                    os.kill(pid, signal.SIGKILL)
        self.check_log(client)
        # The client kills a server it judged unresponsive once the channel is
        # closed: then the proxy's last report is the one of its last mutation.
        killed = "killing it" in self.log.read_text(errors="replace")
        try:
            self.report = json.loads((self.workdir / "proxy.json").read_text())
        except (OSError, ValueError):
            self.report = {}
            if not killed:
                self.problems.append("the proxy left no report (it crashed)")
        else:
            if not self.report.get("client_eof") and not killed:
                self.problems.append("the proxy never saw the channel close")
        if not self.report.get("endless_entries"):
            # Only a listing that never ends may keep a program busy that long.
            self.problems += self.overran

    def exercise(self, client: subprocess.Popen[bytes]) -> None:
        rng = random.Random(self.seed)
        programs = list(PROGRAMS)
        rng.shuffle(programs)
        env = {**os.environ, "M": str(self.mnt), "LC_ALL": "C"}
        if self.parallel:
            programs = [" & ".join(self.parallel) + " & wait"]
        validate = f"{shlex.quote(sys.executable)} -c {shlex.quote(VALIDATE)} $M"
        for program in [*programs, validate]:
            started = time.monotonic()
            try:
                output = _run_bounded(program, env, PROGRAM_LIMIT)
            except Overran as overran:
                output = ""
                problem = f"{program[:60]!r} still running after {PROGRAM_LIMIT} s"
                if overran.unkillable:
                    self.problems.append(problem + ", and SIGKILL did not end it")
                else:
                    self.overran.append(problem)
            self.timings[program[:24]] = round(time.monotonic() - started, 2)
            if program is validate and output.strip():
                self.problems.append(f"values out of range reached the kernel:\n{output}")
            if client.poll() is not None:
                self.problems.append(f"the client exited ({client.returncode}) while mounted")
                return

    def unmount(self, client: subprocess.Popen[bytes]) -> None:
        started = time.monotonic()
        if is_mounted(self.mnt):
            result = subprocess.run(["fusermount", "-u", str(self.mnt)], capture_output=True,
                                    text=True, timeout=30)
            if result.returncode != 0:
                self.problems.append(f"fusermount -u failed: {result.stderr.strip()}")
                abort_connection(self.mnt)
        try:
            client.wait(EXIT_LIMIT)
        except subprocess.TimeoutExpired:
            self.problems.append(f"the client did not exit within {EXIT_LIMIT} s of unmount; "
                                 f"its threads wait in {_wchans(client.pid)}")
        self.timings["exit"] = time.monotonic() - started

    def check_log(self, client: subprocess.Popen[bytes]) -> None:
        text = self.log.read_text(errors="replace")
        expected = 0 if self.mounted else 1
        if client.returncode != expected:
            self.problems.append(f"the client exited {client.returncode}, not {expected}")
        for marker in ("Traceback", "exceptions)", "Exception ignored"):
            if marker in text:
                self.problems.append(f"the client logged {marker!r}")
                break

    def mutations(self) -> list[object]:
        found = self.report.get("mutations")
        return found if isinstance(found, list) else []

    def describe(self) -> str:
        tail = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
        return (f"fuzz session {self.server.name} seed {self.seed} failed "
                f"(replay: python tests/fuse/fuse_fuzz.py --server {self.server.name} "
                f"--seed {self.seed}):\n  " + "\n  ".join(self.problems)
                + f"\nmutations: {self.report.get('mutations')}\ntimings: {self.timings}"
                + f"\nclient log (end):\n{tail}")


class Overran(Exception):
    """A program outlived its limit; `unkillable`: SIGKILL did not end it either."""

    def __init__(self, unkillable: bool) -> None:
        super().__init__(unkillable)
        self.unkillable = unkillable


def _run_bounded(program: str, env: dict[str, str], limit: float) -> str:
    """Run program in its own process group; raise Overran if it outlived limit (killed)."""
    process = subprocess.Popen(["bash", "-c", program], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        try:
            process.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            # Waiting in the kernel for a reply the client took: unkillable. Free it.
            abort_connection(Path(env["M"]))
            process.communicate()
            raise Overran(unkillable=True) from None
        raise Overran(unkillable=False) from None
    return output.decode(errors="replace")


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found += [child, *_descendants(child)]
    return found


def _wchans(pid: int) -> list[str]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.append((task / "wchan").read_text())
    return found


def _peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def run_session(server: Server, seed: int, keep: bool = False, plan: str | None = None,
                parallel: tuple[str, ...] = ()) -> Session:
    """One session in a fresh directory (kept if it failed or `keep`)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"qsf-fuzz-{server.name}-{seed}-"))
    workdir.chmod(0o755)
    session = Session(server, seed, workdir, plan=plan, parallel=parallel)
    try:
        session.run()
    finally:
        if not session.problems and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return session


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("qsf", "diod"), default="qsf")
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, help="replay this one session (kept in /tmp)")
    args = parser.parse_args()
    seeds = [args.seed] if args.seed is not None else range(args.first_seed,
                                                             args.first_seed + args.sessions)
    failures = 0
    started = time.monotonic()
    for done, seed in enumerate(seeds, 1):
        session = run_session(Server(args.server), seed, keep=args.seed is not None)
        if session.problems:
            failures += 1
            print(session.describe(), flush=True)
        rate = done / (time.monotonic() - started) * 60
        print(f"{args.server} seed {seed}: {'FAIL' if session.problems else 'ok'} "
              f"mounted={session.mounted} mutations={len(session.mutations())} "
              f"rss={session.peak_rss_kib}KiB exit={session.timings.get('exit', 0):.1f}s "
              f"[{done} done, {failures} failed, {rate:.1f}/min]", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
