"""Interop with an independent 9P2000.L client: diodls and diodcat from Debian's diod.

Those clients speak TCP only, so socat bridges a loopback port to one server
process per connection. Every check runs against qsf-server and, as a control
that the checks themselves are right, against diod serving the same export.

diod's client library sends Tauth first and goes on without authentication
only when the answer is Rlerror(ENOENT), which is what diod itself answers
when no authentication is required ("error authenticating to server" means
the server answered something else). `diodls -l` walks every listed name,
"." and ".." included, to stat it; diod walks "." in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import support

pytestmark = pytest.mark.diod

BIG_SIZE = 3 * 1024 * 1024 + 12345  # several 64 KiB reads, not a multiple of any
CLIENT_TIMEOUT = 30  # seconds, for each diodls/diodcat run


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (read from /proc, without connecting)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":
                return True
    return False


class Bridge:
    """socat on a loopback port, running `server_argv` on each connection's stdio."""

    def __init__(self, server_argv: list[str], log: Path) -> None:
        self.server_argv = server_argv
        self.log = log
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        # The servers' working directory: diod sometimes crashes when a
        # connection closes, and its core dump must not stay behind.
        self.scratch = tempfile.mkdtemp(prefix="qsf-interop-")

    def start(self) -> None:
        socat = support.need_program("socat")
        command = " ".join(self.server_argv)
        for _attempt in range(5):
            self.port = _free_port()
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(
                    [socat, f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork",
                     f"EXEC:{command}"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.scratch,
                    start_new_session=True,  # its own process group: see stop()
                )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                if _listening(self.port):
                    return
                time.sleep(0.02)
            self.stop()  # the port was taken meanwhile, or socat failed: try another
        pytest.fail(f"socat did not listen; its log:\n{self.log.read_text(errors='replace')}")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def stop(self) -> None:
        """Stop socat and whatever server it still runs (its process group)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process = None


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interop") / "export"
    (root / "sub dir" / "deeper").mkdir(parents=True)
    (root / "hello.txt").write_bytes(b"hello, 9P\n")
    (root / "name with spaces.txt").write_bytes(b"spaces are fine\n")
    (root / "empty").write_bytes(b"")
    (root / "sub dir" / "inner file").write_bytes(b"inside a subdirectory\n")
    (root / "sub dir" / "deeper" / "leaf").write_bytes(b"leaf\n")
    (root / "big.bin").write_bytes(os.urandom(BIG_SIZE))
    os.symlink("hello.txt", root / "link")
    return root


def _server_argv(kind: str, export: Path) -> list[str]:
    if kind == "qsf":
        return [support.venv_program("qsf-server"), str(export)]
    diod = support.need_program("diod")
    return [diod, "-f", "-n", "-c", "/dev/null", "-L", "stderr", "-e", str(export),
            "--rfdno", "0", "--wfdno", "1"]


@pytest.fixture(scope="module", params=["qsf", "diod"])
def bridge(request: pytest.FixtureRequest, export: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    log = tmp_path_factory.mktemp("bridge-log") / f"{request.param}.log"
    running = Bridge(_server_argv(request.param, export), log)
    try:
        running.start()
        yield running
    finally:
        running.close()


def _client(bridge: Bridge, export: Path, program: str, *args: str,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
    argv = [support.need_program(program), "-s", f"127.0.0.1:{bridge.port}",
            "-a", str(export), "-t", str(CLIENT_TIMEOUT), *args]
    done = subprocess.run(argv, capture_output=True, timeout=CLIENT_TIMEOUT + 10)
    if check and (done.returncode != 0 or done.stderr):
        # diodls goes on (exit 0) after an entry it cannot stat: stderr must be empty too.
        pytest.fail(f"{argv} exited {done.returncode}: {done.stderr.decode(errors='replace')}\n"
                    f"server log:\n{bridge.log.read_text(errors='replace')}")
    return done


def _names(listing: bytes) -> set[str]:
    return {line for line in listing.decode().splitlines() if line not in ("", ".", "..")}


def test_diodls_lists_the_root(bridge: Bridge, export: Path) -> None:
    listed = _client(bridge, export, "diodls", "/")
    assert _names(listed.stdout) == set(os.listdir(export))


def test_diodls_lists_a_subdirectory(bridge: Bridge, export: Path) -> None:
    listed = _client(bridge, export, "diodls", "sub dir")
    assert _names(listed.stdout) == {"inner file", "deeper"}
    deeper = _client(bridge, export, "diodls", "sub dir/deeper")
    assert _names(deeper.stdout) == {"leaf"}


def test_diodls_long_shows_sizes_and_modes(bridge: Bridge, export: Path) -> None:
    listed = _client(bridge, export, "diodls", "-l", "/").stdout.decode()
    seen: dict[str, tuple[str, int]] = {}
    for line in listed.splitlines():
        # "-rw-r--r--.    1 user group    SIZE Mon DD HH:MM NAME" (NAME may hold spaces)
        fields = line.split(maxsplit=8)
        seen[fields[8]] = (fields[0][:10], int(fields[4]))
    for name in os.listdir(export):
        assert name in seen, f"{name!r} missing from diodls -l:\n{listed}"
        info = os.lstat(export / name)
        if stat.S_ISLNK(info.st_mode):
            continue  # diodls shows a symlink as "-rwxrwxrwx", its target's size varies
        assert seen[name] == (stat.filemode(info.st_mode), info.st_size), name


def test_diodcat_reads_small_files(bridge: Bridge, export: Path) -> None:
    read = _client(bridge, export, "diodcat", "hello.txt", "name with spaces.txt",
                   "sub dir/inner file", "sub dir/deeper/leaf", "empty")
    expected = b"".join((export / name).read_bytes() for name in (
        "hello.txt", "name with spaces.txt", "sub dir/inner file", "sub dir/deeper/leaf", "empty"))
    assert read.stdout == expected


@pytest.mark.parametrize("msize", [65536, 8192])
def test_diodcat_reads_a_large_file_byte_for_byte(bridge: Bridge, export: Path,
                                                  msize: int) -> None:
    read = _client(bridge, export, "diodcat", "-m", str(msize), "big.bin")
    expected = (export / "big.bin").read_bytes()
    assert len(read.stdout) == BIG_SIZE
    assert hashlib.sha256(read.stdout).digest() == hashlib.sha256(expected).digest()


def test_errors_reach_the_client(bridge: Bridge, export: Path) -> None:
    missing = _client(bridge, export, "diodcat", "no such file", check=False)
    assert missing.returncode != 0
    assert b"No such file or directory" in missing.stderr
    directory = _client(bridge, export, "diodcat", "sub dir", check=False)
    assert directory.returncode != 0
    assert missing.stdout == directory.stdout == b""
