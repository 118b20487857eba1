"""The demo: share a folder of one simulated qube with another, for real, step by step.

    python -m qsf_sim.demo [--unattended] [--keep] [--gui]  (as root; also `qsf-sim demo`)

It builds a simulated dom0, a server qube "work" and a client qube "personal" in a
fresh directory under /tmp (qsf_sim: each qube its own Unix user, directory and
qrexec socket; the project's qubes-rpc services and policy files installed as the
packages install them), puts a sample folder in work's home, and runs the real
`qvm-mount-folder work FOLDER MOUNTPOINT` as personal's user, with the FUSE backend.
dom0's question (Once / Always / Deny / Block) is asked on this terminal when stdin
is one; unattended (no terminal, or --unattended) the simulated dom0 answers
"once" itself; with --gui it is the real dialog (qsf_sim.demo_gui). Then it shows
the mounted files, writes one from the client, shows
`qvm-mount-folder --list`, and disconnects with `fusermount -u` (--keep: leaves
the share up and prints the commands to look around and to clean up, the last
one being `python -m qsf_sim.demo --clean-up DIR`).

Exit status: 0 when every step worked, 3 when dom0 refused the folder, 1 for any
other failure, 130 when interrupted. Whatever happens (failure, Ctrl-C, SIGTERM),
it unmounts, stops every process of the simulation, removes its directory and the
Unix users it created (unless --keep succeeded).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from qsf_sim.demo_gui import DemoDisplay, DemoGuiError
from qsf_sim.layout import ADMIN, LayoutError, Qube, unix_user
from qsf_sim.runas import remove_user
from qsf_sim.sim import Sim, SimError
from qsf_sim.tree import FOLDER_ANSWER, REPO

SERVER = "work"
CLIENT = "personal"
QUBES = (ADMIN, SERVER, CLIENT)
FOLDER_NAME = "Shared"
MOUNT_NAME = "mnt"
WRITTEN_NAME = "from-personal.txt"
WRITTEN_TEXT = "written in qube personal\n"
NOT_UTF8_NAME = b"caf\xe9-latin1.txt"  # "café" in Latin-1: not valid UTF-8
BASE_PREFIX = "qsf-demo-"
CREATED_USERS = "created-users"  # in the demo's directory: qube names, one a line
COMMAND_TIMEOUT = 60.0
STOP_GRACE = 5.0
MOUNT_TIMEOUT = 330.0  # longer than dom0's terminal prompt (it denies after 300 s)
ACCESS = {"ro": "read-only", "rw": "read-write"}
EXIT_OK, EXIT_FAILED, EXIT_DENIED, EXIT_INTERRUPTED = 0, 1, 3, 130
QVM_EXIT_DENIED = 3

parser = argparse.ArgumentParser(
    prog="python -m qsf_sim.demo",
    description="Share a folder of a simulated qube with another one through the real "
                "qrexec services, dom0 decision and FUSE client (run as root).")
parser.add_argument("--unattended", action="store_true",
                    help="never ask: the simulated dom0 answers by itself (the default "
                         "when stdin is not a terminal)")
parser.add_argument("--answer", default="once rw", metavar="'once|always|deny|never|block [ro|rw]'",
                    help="dom0's answer when unattended (default: %(default)s)")
parser.add_argument("--keep", action="store_true",
                    help="leave the share mounted and the simulation running; print the "
                         "commands to look around and to clean up")
parser.add_argument("--clean-up", type=Path, metavar="DIR",
                    help="remove what a run with --keep left in DIR (as it printed)")
parser.add_argument("--gui", action="store_true",
                    help="dom0 asks with the real dialog (qsf-ask-agent): on $DISPLAY when set "
                         "(answer it there), else on a virtual display (Xvfb) where the demo "
                         "gives --answer with the dialog's keys and prints a screenshot's path")
parser.add_argument("--workdir", type=Path, default=Path("/tmp"),
                    help="where the simulation's directory is made (default: %(default)s; "
                         "every qube's user must be able to reach it)")


class DemoFailed(Exception):
    """A step failed; the message says which and why."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: stop and clean up as for Ctrl-C."""


def say(text: str = "") -> None:
    print(text, flush=True)


def shown(data: bytes) -> str:
    """Output of a command, indented, undecodable bytes escaped."""
    text = data.decode("utf-8", "backslashreplace").rstrip("\n")
    return textwrap.indent(text, "     | ", lambda line: True) if text else "     | (nothing)"


def command_line(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(word) for word in argv)


def terminal_available() -> bool:
    """True when dom0's question can be asked: stdin is a terminal and /dev/tty opens."""
    if not sys.stdin.isatty():
        return False
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        return False
    return True


def existing_users() -> set[str]:
    return {name for name in QUBES if _user_exists(unix_user(name))}


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest last (from /proc/self/mounts)."""
    found = []
    prefix = str(root) + "/"
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.split(" ")
            if len(fields) < 2:
                continue
            # /proc/mounts escapes space, tab, newline and backslash as octal.
            point = fields[1].encode("latin-1", "surrogateescape").decode("unicode_escape")
            if point == str(root) or point.startswith(prefix):
                found.append(point)
    return found


def processes_of(base: Path) -> list[int]:
    """The processes of the simulation under `base`: its qrexec daemon, and everything run
    in a simulated qube (their PATH starts with the qube's bin directory, under `base`).
    Nothing else matches, not even a shell whose working directory is under `base`."""
    path_marker = b"\0PATH=" + os.fsencode(base) + b"/"
    daemon_marker = b"\0qsf_sim.cli\0daemon\0--root\0" + os.fsencode(base) + b"/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = b"\0" + Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue  # gone already
        if path_marker in environ or daemon_marker in cmdline:
            found.append(int(entry))
    return found


def wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():  # type: ignore[operator]
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


class Demo:
    def __init__(self, args: argparse.Namespace, interactive: bool) -> None:
        self.args = args
        self.interactive = interactive
        self.base = Path(tempfile.mkdtemp(prefix=BASE_PREFIX, dir=args.workdir)).absolute()
        self.base.chmod(0o755)  # every qube's user walks through it
        self.users_before = existing_users()
        self.sim = Sim(self.base / "sim", [Qube(SERVER, label="blue"),
                                           Qube(CLIENT, label="yellow")],
                       qsf_prompt="gui" if args.gui else
                       "terminal" if interactive else "scripted")
        self.display: DemoDisplay | None = None
        if args.gui:
            self.display = DemoDisplay(self.sim, os.environ.get("DISPLAY") or None,
                                       self.base / "xsession",
                                       args.workdir.absolute() / f"{self.base.name}-dialog.png")
        self.folder = self.sim.home(SERVER) / FOLDER_NAME
        self.mountpoint = self.sim.home(CLIENT) / MOUNT_NAME

    # --- the steps --------------------------------------------------------------------

    def run(self) -> None:
        say(f"qsf demo: qube {CLIENT!r} mounts a folder of qube {SERVER!r}, through a "
            "simulated Qubes machine on this computer.\n")
        self.build()
        self.sample_folder()
        self.mount()
        self.show_files()
        self.write_from_client()
        self.list_shares()
        if self.args.keep:
            self.print_keep_instructions()
        else:
            self.disconnect()

    def build(self) -> None:
        say(f"1. Building the simulated machine in {self.sim.root}:")
        say(f"   dom0, the server qube {SERVER!r} and the client qube {CLIENT!r}. Each qube has")
        say("   its own Unix user (qsfsim-NAME), its own directory ROOT/qubes/NAME (its home")
        say("   is ROOT/qubes/NAME/home/user) and its own qrexec socket. The project's qrexec")
        say("   services (qubes-rpc/) and policy files (policy/) are installed in them as the")
        say("   packages install them, and a simulated qrexec daemon plays dom0's part.")
        self.ensure_fuse_usable()
        try:
            self.sim.start()
        except (SimError, LayoutError, OSError) as error:
            raise DemoFailed(f"the simulation did not start: {error}") from None
        self.record_created_users()
        assert self.sim.daemon is not None
        say(f"   qrexec daemon running (pid {self.sim.daemon.pid}).")
        if self.display is not None:
            try:
                where = self.display.start()
            except (DemoGuiError, SimError) as error:
                raise DemoFailed(f"the dialog cannot be shown: {error}") from None
            say(f"   dom0's graphical session: qsf-ask-agent runs on {where}, as it would")
            say("   after dom0's login (XDG autostart).")
        say()

    def ensure_fuse_usable(self) -> None:
        """/dev/fuse 0666, as udev makes it on Qubes qubes and most distributions."""
        try:
            mode = os.stat("/dev/fuse").st_mode
        except OSError:
            raise DemoFailed("/dev/fuse is missing: load the fuse module (modprobe fuse)") from None
        if not stat.S_ISCHR(mode):
            raise DemoFailed("/dev/fuse is not a character device")
        if stat.S_IMODE(mode) & 0o666 != 0o666:
            os.chmod("/dev/fuse", 0o666)
            say("   /dev/fuse made usable by every user (mode 0666), as udev does on Qubes qubes.")

    def sample_folder(self) -> None:
        say(f"2. A sample folder in qube {SERVER}'s home: {self.folder}")
        steps = [["mkdir", "-p", str(self.folder / "photos")],
                 ["sh", "-c", 'printf "%s\\n" "Hello from qube work." '
                  '"This file lives in work; personal reads it over qrexec." > "$1"',
                  "sh", str(self.folder / "notes.txt")],
                 ["sh", "-c", 'printf "not really a picture\\n" > "$1"', "sh",
                  str(self.folder / "photos" / "holiday.jpg")],
                 ["ln", "-s", "notes.txt", str(self.folder / "link-to-notes")],
                 ["sh", "-c", 'printf "a file whose name is not UTF-8\\n" > "$1"', "sh",
                  os.fsdecode(os.fsencode(self.folder) + b"/" + NOT_UTF8_NAME)]]
        for argv in steps:
            self.in_qube(SERVER, argv)
        # In Qubes the files of both qubes belong to the same user (uid 1000). Here each
        # qube has its own Unix user, so the folder is opened to every user to let the
        # client write into it (the FUSE mount checks permissions as the kernel would).
        self.in_qube(SERVER, ["chmod", "0777", str(self.folder)])
        say("   notes.txt, photos/holiday.jpg, a symlink link-to-notes -> notes.txt and a file")
        say("   named caf\\xe9-latin1.txt (a name that is not valid UTF-8). The folder is made")
        say("   writable for every user: in Qubes both qubes' user is uid 1000, here the qubes")
        say("   have different Unix users.\n")

    def mount(self) -> None:
        self.in_qube(CLIENT, ["mkdir", "-p", str(self.mountpoint)])
        argv = ["qvm-mount-folder", SERVER, str(self.folder), str(self.mountpoint)]
        say(f"3. In qube {CLIENT}, its user runs:")
        say(f"     {command_line(argv)}")
        say("   qvm-mount-folder calls qsf.AuthorizeFolderAccess in dom0 through qrexec, and dom0")
        say("   asks the user whether personal may use that folder of work:")
        answering: threading.Thread | None = None
        answered = threading.Event()
        if self.display is not None and not self.display.virtual:
            say(f"   (answer in the dialog on {self.display.user_display}: Allow once, Allow")
            say("   always, Deny, Deny always or Block; the switch makes it read-only)")
        elif self.display is not None:
            say(f"   (the dialog is on a virtual display: the demo answers {self.args.answer!r}")
            say("   with the dialog's keys, as you would)")
            answering = threading.Thread(target=self.display.answer_by_keyboard,
                                         args=(self.args.answer, answered), daemon=True)
            answering.start()
        elif self.interactive:
            say("   (answer below: o = once, a = always, d = deny, n = never, b = block;")
            say("   then whether writing is allowed)")
        else:
            self.sim.answer_folder(self.args.answer)
            say(f"   (unattended: the simulated dom0 answers {self.args.answer!r} by itself)")
        try:
            result = self.in_qube(CLIENT, argv, timeout=MOUNT_TIMEOUT, check=False)
        finally:
            answered.set()
            if answering is not None:
                answering.join(30)
        if self.display is not None and self.display.screenshot_path is not None:
            say(f"   A picture of the dialog as it appeared: {self.display.screenshot_path}")
        mounted = str(self.mountpoint) in mounts_under(self.sim.root)
        if result.returncode == QVM_EXIT_DENIED:
            raise DemoFailed("dom0 refused the folder: "
                             + result.stderr.decode("utf-8", "backslashreplace").strip()
                             + "\n   (that is what a refusal looks like; nothing was mounted)",
                             EXIT_DENIED)
        if result.returncode != 0 or not mounted:
            raise DemoFailed(f"qvm-mount-folder failed (exit {result.returncode}): "
                             + result.stderr.decode("utf-8", "backslashreplace").strip()
                             + self.logs())
        if not self.interactive and self.display is None:
            for asked in self.sim.folder_prompts():
                wanted, given = (ACCESS.get(str(asked[key])) for key in ("mode", "answer_mode"))
                say(f"   dom0 was asked: may {asked['client']} have {wanted} access to that "
                    f"folder of {asked['server']}?")
                say(f"   answer: {asked['answer']}, {given}")
        say("   dom0 allowed it and wrote a qrexec policy line for this grant only; the")
        say("   client then called qsf.ConnectToFolder in work, which checked the grant with")
        say("   dom0 (qsf.QueryFolderAuthorization) and started qsf-server on the folder;")
        say("   qsf-fuse in personal mounted its end of the channel.")
        say("   Mounted: qvm-mount-folder exited 0.\n")

    def show_files(self) -> None:
        say(f"4. The folder as qube {CLIENT} sees it:")
        self.show(CLIENT, ["ls", "-l", "--escape", str(self.mountpoint)])
        self.show(CLIENT, ["ls", "-l", "--escape", str(self.mountpoint / "photos")])
        self.show(CLIENT, ["cat", str(self.mountpoint / "notes.txt")])
        self.show(CLIENT, ["cat", str(self.mountpoint / "link-to-notes")])
        say("   (owners show the Unix user of qube work: the server sends uids unchanged)\n")

    def write_from_client(self) -> None:
        target = self.mountpoint / WRITTEN_NAME
        say(f"5. Qube {CLIENT} writes a file into the mounted folder:")
        argv = ["sh", "-c", 'printf "%s" "$1" > "$2"', "sh", WRITTEN_TEXT, str(target)]
        say(f"     {CLIENT}$ echo {shlex.quote(WRITTEN_TEXT.strip())} > {shlex.quote(str(target))}")
        result = self.in_qube(CLIENT, argv, check=False)
        if result.returncode != 0:
            message = result.stderr.decode("utf-8", "backslashreplace").strip()
            if "Read-only file system" not in message:
                raise DemoFailed(f"writing {target} failed: {message}")
            say(f"   refused: {message}")
            say("   (the grant is read-only: qsf-server in work refuses every write)\n")
            return
        say(f"   and the file is now in qube {SERVER}'s folder:")
        self.show(SERVER, ["ls", "-l", "--escape", str(self.folder)])
        self.show(SERVER, ["cat", str(self.folder / WRITTEN_NAME)])
        if (self.folder / WRITTEN_NAME).read_text(errors="replace") != WRITTEN_TEXT:
            raise DemoFailed(f"{self.folder / WRITTEN_NAME} does not hold what personal wrote")
        say("")

    def list_shares(self) -> None:
        say(f"6. The shares mounted in qube {CLIENT}:")
        self.show(CLIENT, ["qvm-mount-folder", "--list"])
        say("")

    def disconnect(self) -> None:
        argv = ["fusermount", "-u", str(self.mountpoint)]
        say("7. To disconnect, the user of the client qube unmounts the folder:")
        say(f"     {command_line(argv)}")
        say("   which ends qsf-fuse and qrexec-client-vm in personal and qsf-server in work.")
        self.in_qube(CLIENT, argv)
        if not wait_for(lambda: str(self.mountpoint) not in mounts_under(self.sim.root), 10):
            raise DemoFailed(f"{self.mountpoint} is still mounted after fusermount -u")
        # dom0's qrexec daemon and, with --gui, its session's agent stay.
        staying = {self.sim.daemon.pid if self.sim.daemon else None,
                   self.display.agent_pid() if self.display else None}
        if not wait_for(lambda: not [p for p in processes_of(self.sim.root)
                                     if p not in staying], 15):
            raise DemoFailed("processes of the share still run after the unmount: "
                             + ", ".join(map(str, processes_of(self.sim.root))))
        say("   Done: unmounted, and the share's processes have exited.\n")

    def print_keep_instructions(self) -> None:
        run = [*self.sim_command(), "run", "--root", str(self.sim.root), CLIENT, "--"]
        mountpoint = str(self.mountpoint)
        say("7. --keep: the share stays mounted. FUSE lets only personal's user in, so look")
        say("   around as that user (inside qube personal):")
        say(f"     {command_line([*run, 'ls', '-la', mountpoint])}")
        say(f"     {command_line([*run, 'qvm-mount-folder', '--list'])}")
        say("   To disconnect (as the client qube's user), then stop the simulation and remove")
        say("   it (its qrexec daemon, files and the Unix users the demo created), run:")
        say(f"     {command_line([*run, 'fusermount', '-u', mountpoint])}")
        say(f"     {command_line([*self.demo_command(), '--clean-up', str(self.base)])}")
        say("   (unmounting ends qsf-fuse, qrexec-client-vm and qsf-server; --clean-up also")
        say("   unmounts whatever is still mounted.)\n")

    # --- helpers ----------------------------------------------------------------------

    def sim_command(self) -> list[str]:
        script = Path(sys.executable).parent / "qsf-sim"
        return [str(script)] if script.exists() else [sys.executable, "-m", "qsf_sim.cli"]

    def demo_command(self) -> list[str]:
        script = Path(sys.executable).parent / "qsf-sim"
        return [str(script), "demo"] if script.exists() else [sys.executable, "-m", "qsf_sim.demo"]

    def in_qube(self, qube: str, argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT,
                check: bool = True) -> subprocess.CompletedProcess[bytes]:
        try:
            result = self.sim.run(qube, argv, timeout=timeout, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except subprocess.TimeoutExpired:
            raise DemoFailed(f"in qube {qube}, {command_line(argv)} did not finish within "
                             f"{timeout:.0f} s") from None
        if check and result.returncode != 0:
            raise DemoFailed(f"in qube {qube}, {command_line(argv)} failed "
                             f"(exit {result.returncode}): "
                             + result.stderr.decode("utf-8", "backslashreplace").strip())
        return result

    def show(self, qube: str, argv: Sequence[str]) -> None:
        say(f"     {qube}$ {command_line(argv)}")
        say(shown(self.in_qube(qube, argv).stdout))

    def logs(self) -> str:
        parts = []
        for qube in (ADMIN, SERVER):
            text = self.sim.service_log(qube).strip()
            if text:
                parts.append(f"\n   {qube}'s service log ({self.sim.root}/log/{qube}.log):\n"
                             + textwrap.indent(text[-1500:], "     | "))
        return "".join(parts)

    # --- cleaning up --------------------------------------------------------------------

    def record_created_users(self) -> None:
        """For --clean-up in a later run: the qubes whose Unix users this demo made."""
        created = [name for name in QUBES if name not in self.users_before]
        (self.base / CREATED_USERS).write_text("".join(f"{name}\n" for name in created))

    def clean_up(self) -> list[str]:
        if self.display is not None:
            self.display.stop()
        self.sim.stop()
        return clean_up(self.base, [n for n in QUBES if n not in self.users_before])


def clean_up(base: Path, created_users: Sequence[str]) -> list[str]:
    """Unmount, stop every process of the simulation under `base`, then remove `base` and
    the Unix users of `created_users` (qube names). Returns what could not be cleaned."""
    problems = []
    for point in reversed(mounts_under(base)):
        unmounted = subprocess.run(["fusermount", "-u", point], capture_output=True,
                                   check=False).returncode == 0
        if not unmounted:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if mounts_under(base):
        problems.append("still mounted: " + ", ".join(mounts_under(base)))
    stop_processes(base)
    if processes_of(base):
        problems.append("processes still running: " + ", ".join(map(str, processes_of(base))))
    if not problems:
        shutil.rmtree(base, ignore_errors=True)
        for name in created_users:
            remove_user(name)
    return problems


def stop_processes(base: Path) -> None:
    """Every process of the simulation (its daemon, a share's qsf-fuse and
    qrexec-client-vm...): SIGTERM, then SIGKILL, each followed by a grace period."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        pids = processes_of(base)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        wait_for(lambda: not processes_of(base), STOP_GRACE)


def clean_up_kept(base: Path) -> int:
    """--clean-up BASE: remove what a run with --keep left."""
    if os.geteuid() != 0:
        print("qsf demo: --clean-up needs root (it removes Unix users)", file=sys.stderr)
        return EXIT_FAILED
    base = base.absolute()
    if not (base.name.startswith(BASE_PREFIX) and (base / "sim" / "sim.json").is_file()
            and (base / CREATED_USERS).is_file()):
        print(f"qsf demo: {base} is not the directory of a demo run with --keep",
              file=sys.stderr)
        return EXIT_FAILED
    created = (base / CREATED_USERS).read_text().split()
    problems = clean_up(base, [name for name in created if name in QUBES])
    for line in problems:
        print(f"qsf demo: could not clean up: {line}", file=sys.stderr)
    if problems:
        return EXIT_FAILED
    say(f"Removed {base}, stopped its processes and removed the users the demo created.")
    return EXIT_OK


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def problems_before_start() -> str | None:
    if os.geteuid() != 0:
        return ("run the demo as root: it creates a Unix user for every simulated qube "
                "(and the qubes then run as those users)")
    for program in ("setpriv", "useradd", "userdel", "fusermount"):
        if shutil.which(program) is None and shutil.which(program, path="/usr/sbin:/sbin") is None:
            return f"{program} is missing (run scripts/install.sh)"
    for directory, needed in [(REPO, 0o005), *((parent, 0o001) for parent in REPO.parents)]:
        if directory.stat().st_mode & needed != needed:
            return (f"{directory} is not readable by other users, and the simulated qubes "
                    f"(each its own user) run the project from {REPO}: use a checkout "
                    "outside /root, or chmod o+rx that directory")
    if shutil.which("qvm-mount-folder", path=str(Path(sys.executable).parent)) is None:
        return (f"qvm-mount-folder is not installed next to {sys.executable} "
                "(run scripts/install.sh, then this demo with the virtualenv's python)")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser.parse_args(argv)
    if not FOLDER_ANSWER.match(args.answer):
        parser.error(f"--answer: not an answer: {args.answer!r}")
    if args.clean_up is not None:
        return clean_up_kept(args.clean_up)
    problem = problems_before_start()
    if problem:
        print(f"qsf demo: {problem}", file=sys.stderr)
        return EXIT_FAILED
    interactive = not args.unattended and terminal_available()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    try:
        demo = Demo(args, interactive)
    except OSError as error:
        print(f"qsf demo: cannot make a directory in {args.workdir}: {error}", file=sys.stderr)
        return EXIT_FAILED
    status = EXIT_FAILED
    try:
        demo.run()
        status = EXIT_OK
    except DemoFailed as error:
        print(f"\nqsf demo failed: {error}", file=sys.stderr, flush=True)
        status = error.status
    except (KeyboardInterrupt, Interrupted):
        print("\nqsf demo: interrupted.", file=sys.stderr, flush=True)
        status = EXIT_INTERRUPTED
    finally:
        if not (status == EXIT_OK and args.keep):
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)  # clean up whatever comes
            say("Cleaning up: unmounting, stopping the simulation, removing its files...")
            problems = demo.clean_up()
            for line in problems:
                print(f"qsf demo: could not clean up: {line}", file=sys.stderr)
            if problems:
                status = status or EXIT_FAILED
            else:
                say("Clean: nothing of the demo is left.")
    if status == EXIT_OK:
        say("\nThe demo worked. In Qubes the same commands run in real qubes: "
            "qvm-mount-folder SERVER FOLDER MOUNTPOINT, then fusermount -u MOUNTPOINT.")
    return status


if __name__ == "__main__":
    sys.exit(main())
