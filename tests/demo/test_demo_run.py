"""The demo (issue 4 point 6) run as a user runs it: unattended, on a terminal, with
--keep, refused, interrupted. Each run builds its own simulation under a fresh work
directory; every test checks afterwards, independently of the demo's own checks,
that nothing of it is left: no mount, no process, no file, no new Unix user.
"""

from __future__ import annotations

import os
import pty
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import support

pytestmark = pytest.mark.fuse

DEMO = [sys.executable, "-m", "qsf_sim.demo"]
RUN_TIMEOUT = 120.0
DEMO_USERS = ("qsfsim-dom0", "qsfsim-work", "qsfsim-personal")


@pytest.fixture
def workdir() -> Iterator[Path]:
    if os.geteuid() != 0:
        support.missing("root (the demo gives every simulated qube its own Unix user)")
    for program in ("setpriv", "fusermount3", "useradd"):
        support.need_program(program)
    support.need_fuse()
    path = Path(tempfile.mkdtemp(prefix="qsf-demo-test-", dir="/tmp"))
    path.chmod(0o755)
    users = existing_users()
    yield path
    leftovers = leftovers_of(path, users)
    for point in reversed(mounts_under(path)):  # never leave a test's mess behind
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    for pid in processes_of(path):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, leftovers


def existing_users() -> set[str]:
    found = set()
    for user in DEMO_USERS:
        try:
            pwd.getpwnam(user)
            found.add(user)
        except KeyError:
            pass
    return found


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as table:
        points = [line.split(" ")[1] for line in table]
    return [p for p in points if p.startswith(f"{path}/")]


def processes_of(path: Path) -> list[int]:
    """Processes whose command line or environment names `path` (the test's own excepted)."""
    marker = os.fsencode(path)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            data = (Path(f"/proc/{entry}/cmdline").read_bytes()
                    + Path(f"/proc/{entry}/environ").read_bytes())
        except OSError:
            continue
        if marker in data:
            found.append(int(entry))
    return found


def leftovers_of(path: Path, users_before: set[str]) -> list[str]:
    """What a finished demo left behind (empty when it cleaned up)."""
    deadline = time.monotonic() + 10  # a process may be exiting still
    while processes_of(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [f"mount {p}" for p in mounts_under(path)]
    left += [f"process {pid}" for pid in processes_of(path)]
    left += [f"file {p}" for p in path.iterdir()]
    left += [f"user {u}" for u in existing_users() - users_before]
    return left


def run_demo(workdir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*DEMO, "--workdir", str(workdir), *options],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            errors="backslashreplace", timeout=RUN_TIMEOUT, check=False)
    print(result.stdout, result.stderr)  # shown when an assertion fails
    return result


def paths_in(output: str) -> tuple[str, str]:
    """The served folder and the mount point, as the demo printed its command."""
    match = re.search(r"^ +qvm-mount-folder work (\S+) (\S+)$", output, re.MULTILINE)
    assert match, "the demo did not show the qvm-mount-folder command"
    return match[1], match[2]


def section(output: str, number: int) -> str:
    """Step `number` of the demo's output."""
    match = re.search(rf"^{number}\. .*?(?=^\d+\. |^Cleaning up|\Z)", output,
                      re.MULTILINE | re.DOTALL)
    assert match, f"step {number} missing from the output"
    return match[0]


def check_share_steps(output: str) -> None:
    folder, mountpoint = paths_in(output)
    assert folder.endswith("/qubes/work/home/user/Shared")
    assert mountpoint.endswith("/qubes/personal/home/user/mnt")
    files = section(output, 4)
    # ls -l through the mount: every kind of sample entry, the non-UTF-8 name escaped
    assert re.search(r"^ +\| -.* caf\\351-latin1\.txt$", files, re.MULTILINE)
    assert re.search(r"^ +\| l.* link-to-notes -> notes\.txt$", files, re.MULTILINE)
    assert re.search(r"^ +\| d.* photos$", files, re.MULTILINE)
    assert re.search(r"^ +\| -.* holiday\.jpg$", files, re.MULTILINE)
    # cat of the file and of the symlink, read over 9P
    assert files.count("| Hello from qube work.") == 2
    written = section(output, 5)
    server_side = written.split(f"work$ cat {folder}/from-personal.txt", 1)
    assert len(server_side) == 2, "the server qube's copy of the written file is not shown"
    assert "| written in qube personal" in server_side[1]
    assert re.search(r"^ +\| -.* from-personal\.txt$", server_side[0], re.MULTILINE)
    listing = section(output, 6)
    assert f"| qvm://work{folder} {mountpoint} fuse.qsf" in listing


def test_unattended_demo_shares_shows_disconnects_and_cleans_up(workdir: Path) -> None:
    users = existing_users()
    result = run_demo(workdir)  # stdin is not a terminal: unattended without the option
    assert result.returncode == 0, result.stderr
    output = result.stdout
    assert "unattended: the simulated dom0 answers 'once rw'" in output
    assert "answer: allow-once, read-write" in output
    check_share_steps(output)
    _, mountpoint = paths_in(output)
    assert f"fusermount -u {mountpoint}" in section(output, 7)
    assert "Done: unmounted, and the share's processes have exited." in output
    assert "Clean: nothing of the demo is left." in output
    assert leftovers_of(workdir, users) == []


def test_read_only_answer_shows_the_refused_write(workdir: Path) -> None:
    result = run_demo(workdir, "--unattended", "--answer", "once ro")
    assert result.returncode == 0, result.stderr
    write = section(result.stdout, 5)
    assert "Read-only file system" in write
    assert "qsf-server in work refuses every write" in write
    assert "work$ cat" not in write


def test_denied_demo_fails_with_a_clear_message_and_cleans_up(workdir: Path) -> None:
    users = existing_users()
    result = run_demo(workdir, "--unattended", "--answer", "deny")
    assert result.returncode == 3
    assert "qsf demo failed: dom0 refused the folder: " in result.stderr
    assert "denied by the user" in result.stderr  # qvm-mount-folder's own line
    assert "4. " not in result.stdout
    assert "Clean: nothing of the demo is left." in result.stdout
    assert leftovers_of(workdir, users) == []


def test_keep_leaves_the_share_up_and_its_printed_commands_clean_up(workdir: Path) -> None:
    users = existing_users()
    result = run_demo(workdir, "--unattended", "--keep")
    assert result.returncode == 0, result.stderr
    _, mountpoint = paths_in(result.stdout)
    assert mounts_under(workdir) == [mountpoint]
    assert "Cleaning up" not in result.stdout
    keep = section(result.stdout, 7)
    commands = [line.strip() for line in keep.splitlines() if line.startswith("     ")]
    look, listing, unmount, clean_up = commands
    assert unmount.endswith(f"-- fusermount -u {mountpoint}")
    assert "--clean-up" in clean_up
    assert look.endswith(f"ls -la {mountpoint}")
    looked = subprocess.run(["bash", "-c", look], capture_output=True, text=True,
                            errors="backslashreplace", timeout=30, check=False)
    assert looked.returncode == 0 and " notes.txt" in looked.stdout, looked.stderr
    listed = subprocess.run(["bash", "-c", listing], capture_output=True, text=True,
                            timeout=30, check=False)
    assert f" {mountpoint} fuse.qsf" in listed.stdout, listed.stderr
    base = clean_up.split()[-1]
    # A process of the user's that merely names the directory or works in it survives.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", base],
                                 cwd=base, env={**os.environ, "PWD": base})
    try:
        for command in (unmount, clean_up):  # pasted at once, as a user may do
            done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                  timeout=60, check=False)
            assert done.returncode == 0, (command, done.stderr)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    assert leftovers_of(workdir, users) == []


def read_until(master: int, marker: bytes, shown: bytearray, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while marker not in shown:
        remaining = deadline - time.monotonic()
        assert remaining > 0 and select.select([master], [], [], remaining)[0], (
            f"{marker!r} never shown on the terminal:\n"
            + shown.decode("utf-8", "backslashreplace"))
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every process closed the terminal
            chunk = b""
        assert chunk, f"terminal closed before {marker!r}:\n" + shown.decode(errors="replace")
        shown += chunk


def read_to_end(master: int, shown: bytearray, timeout: float = RUN_TIMEOUT) -> None:
    """Until every process closed the terminal (EIO on Linux)."""
    deadline = time.monotonic() + timeout
    while select.select([master], [], [], max(0, deadline - time.monotonic()))[0]:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            return
        if not chunk:
            return
        shown += chunk


def on_terminal(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The demo with a pty as its controlling terminal and stdio, as in a terminal window."""
    setsid = support.need_program("setsid")
    master, slave = pty.openpty()
    process = subprocess.Popen([setsid, "--ctty", *DEMO, "--workdir", str(workdir)],
                               stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    return process, master


def test_on_a_terminal_dom0_asks_the_user(workdir: Path) -> None:
    users = existing_users()
    process, master = on_terminal(workdir)
    shown = bytearray()
    try:
        read_until(master, b"Answer [o]nce", shown)
        assert b"qube personal asks for read-write access to folder" in shown
        assert b"/qubes/work/home/user/Shared\r\nof qube work." in shown
        os.write(master, b"o\n")
        read_until(master, b"Allow writing?", shown)
        os.write(master, b"y\n")
        read_to_end(master, shown)
        assert process.wait(RUN_TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    output = shown.decode("utf-8", "backslashreplace").replace("\r\n", "\n")
    print(output)
    assert "qsf: allow-once (rw)." in output  # dom0's confirmation
    assert "unattended" not in output
    check_share_steps(output)
    assert "Clean: nothing of the demo is left." in output
    assert leftovers_of(workdir, users) == []


def test_ctrl_c_at_dom0_prompt_stops_and_cleans_up(workdir: Path) -> None:
    users = existing_users()
    process, master = on_terminal(workdir)
    shown = bytearray()
    try:
        read_until(master, b"Answer [o]nce", shown)
        os.write(master, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground group
        read_to_end(master, shown)
        assert process.wait(RUN_TIMEOUT) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    output = shown.decode("utf-8", "backslashreplace")
    print(output)
    assert "qsf demo: interrupted." in output
    assert "Clean: nothing of the demo is left." in output
    assert leftovers_of(workdir, users) == []


def test_clean_up_refuses_a_directory_that_is_not_a_kept_demo(workdir: Path) -> None:
    bystander = workdir / "qsf-demo-look-alike"
    (bystander / "sim").mkdir(parents=True)
    (bystander / "keep.txt").write_text("mine\n")
    result = subprocess.run([*DEMO, "--clean-up", str(bystander)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert "is not the directory of a demo run with --keep" in result.stderr
    assert (bystander / "keep.txt").read_text() == "mine\n"
    shutil.rmtree(bystander)
