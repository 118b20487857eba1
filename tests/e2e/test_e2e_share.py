"""Issue 4 point 7: one share end to end through qsf_sim, as a user would run it.

A simulated dom0, server qube and client qubes (each its own Unix user and
socket); the project's real qubes-rpc services and policy files; qvm-mount-folder
as the client's user with the FUSE backend; dom0's dialog answered by the
simulator's scripted prompt. One simulator serves the module; dom0's decisions,
policy lines and prompt counters are wiped before each test.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import support

from qsf_dom0 import policy
from qsf_dom0.config import Config
from qsf_sim import tree
from qsf_sim.layout import qube_dir
from qsf_sim.runas import lookup
from qsf_sim.sim import Sim

pytestmark = pytest.mark.fuse

EXIT_DENIED, EXIT_NO_FOLDER, EXIT_MOUNT_POINT = 3, 5, 6
QREXEC_REFUSED = 126


@pytest.fixture(scope="module")
def running_sim() -> Iterator[Sim]:
    if os.geteuid() != 0:
        support.missing("root (qsf_sim gives every simulated qube its own Unix user)")
    support.need_program("setpriv")
    support.need_program("fusermount3")
    support.need_fuse()
    root = Path(tempfile.mkdtemp(prefix="qsf-e2e-", dir="/tmp"))
    root.chmod(0o755)
    sim = Sim(root / "sim", ["work", "server", "other", "disp7"])
    try:
        with sim:
            share = sim.home("server") / "share"
            for path in ("share/sub/deeper", "outside"):
                assert sim.run("server", ["mkdir", "-p", path]).returncode == 0
            (share / "hello.txt").write_text("hello from server\n")
            (share / "sub" / "inner.txt").write_text("inner\n")
            shutil.chown(share / "hello.txt", *_owner(sim, "server"))
            shutil.chown(share / "sub" / "inner.txt", *_owner(sim, "server"))
            (sim.home("server") / "file").write_text("not a folder")
            # Writable by every simulated qube user (in Qubes all are uid 1000), so
            # that only a read-only grant can refuse a write.
            share.chmod(0o777)
            yield sim
    finally:
        _unmount_all(root)
        if os.environ.get("QSF_E2E_KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _owner(sim: Sim, qube: str) -> tuple[int, int]:
    identity = lookup(qube)
    return identity.uid, identity.gid


def dom0_config(sim: Sim) -> Config:
    return Config.under(qube_dir(sim.root, "dom0"))


@pytest.fixture
def sim(running_sim: Sim) -> Iterator[Sim]:
    config = dom0_config(running_sim)
    for path in (config.store_path, config.grants_dir / policy.GRANTS_FILE,
                 config.once_dir / policy.ONCE_FILE):
        path.unlink(missing_ok=True)
    if config.state_dir.exists():  # prompt locks and counters (the folder is dom0's)
        for path in config.state_dir.iterdir():
            path.unlink()
    answers = qube_dir(running_sim.root, "dom0") / tree.DOM0_SIM_STATE / tree.FOLDER_ANSWERS
    yield running_sim
    _unmount_all(running_sim.root)
    left = answers.read_text() if answers.exists() else ""
    if left:
        answers.write_text("")
    assert left == "", f"answers the test queued but dom0 never asked for: {left!r}"


def _mounts_under(root: Path) -> list[tuple[str, str]]:
    found = []
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            source, mountpoint = line.split(" ")[:2]
            mountpoint = mountpoint.replace("\\040", " ")
            if mountpoint.startswith(str(root)):
                found.append((source, mountpoint))
    return found


def _unmount_all(root: Path) -> None:
    for _, mountpoint in reversed(_mounts_under(root)):
        if subprocess.run(["fusermount3", "-u", mountpoint], check=False,
                          capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)


def mountpoint(sim: Sim, client: str, name: str = "mnt") -> Path:
    path = sim.home(client) / name
    assert sim.run(client, ["mkdir", "-p", str(path)]).returncode == 0
    return path


def qvm_mount(sim: Sim, client: str, server: str, folder: Path | str, target: Path,
              *options: str) -> subprocess.CompletedProcess[bytes]:
    result = sim.run(client, ["qvm-mount-folder", *options, server, str(folder), str(target)],
                     timeout=60)
    if result.returncode != 0:  # shown by pytest when an assertion fails
        print(f"qvm-mount-folder: {result.stderr!r}\ndom0 log:\n{sim.service_log('dom0')[-1500:]}"
              f"\n{server} log:\n{sim.service_log(server)[-1500:]}")
    return result


def share(sim: Sim, *parts: str) -> Path:
    return sim.home("server").joinpath("share", *parts)


def b64(path: Path | str) -> bytes:
    return base64.b64encode(os.fsencode(path)) + b"\n"


def grant_lines(sim: Sim) -> tuple[list[str], list[str]]:
    config = dom0_config(sim)

    def lines(path: Path) -> list[str]:
        if not path.exists():
            return []
        return [line for line in path.read_text().splitlines() if not line.startswith("#")]

    return (lines(config.grants_dir / policy.GRANTS_FILE),
            lines(config.once_dir / policy.ONCE_FILE))


def authorize(sim: Sim, client: str, server: str, folder: Path, mode: str = "rw") -> str:
    """qsf.AuthorizeFolderAccess called directly; the fingerprint of an allow."""
    result = sim.call(client, "dom0", "qsf.AuthorizeFolderAccess",
                      input=f"{server}\n".encode() + b64(folder) + f"{mode}\n".encode())
    assert result.returncode == 0, result.stderr
    words = result.stdout.decode().split()
    assert words[0] == "allow", result.stdout
    return words[1]


def live_processes(root: Path) -> list[str]:
    """Command lines of the share's processes (qsf-fuse, qrexec-client-vm, qsf-server)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        if str(root) in cmdline and "qsf_sim.cli" not in cmdline and pid != str(os.getpid()):
            found.append(cmdline)
    return found


def wait_until(condition: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


# --- the happy paths ------------------------------------------------------------------


def test_allow_once_mounts_and_the_next_mount_asks_again(sim: Sim) -> None:
    target = mountpoint(sim, "work")
    prompts = len(sim.folder_prompts())
    sim.answer_folder("once rw")
    result = qvm_mount(sim, "work", "server", share(sim), target)
    assert result.returncode == 0, result.stderr
    assert (f"qvm://server{share(sim)}", str(target)) in _mounts_under(sim.root)
    fstype = next(line.split()[2] for line in Path("/proc/self/mounts").read_text().splitlines()
                  if line.split()[1] == str(target))
    assert fstype == "fuse.qsf"
    cat = sim.run("work", ["cat", str(target / "hello.txt")])
    assert cat.stdout == b"hello from server\n"
    listed = sim.run("work", ["qvm-mount-folder", "--list"])
    assert f"qvm://server{share(sim)} {target} fuse.qsf" in listed.stdout.decode()
    assert grant_lines(sim) == ([], [])  # the one-time grant was used
    assert len(sim.folder_prompts()) == prompts + 1

    assert sim.run("work", ["fusermount3", "-u", str(target)]).returncode == 0
    # Unmounting ends qsf-fuse, qrexec-client-vm and the server.
    assert wait_until(lambda: not live_processes(sim.root)), live_processes(sim.root)

    sim.answer_folder("deny")
    again = qvm_mount(sim, "work", "server", share(sim), target)
    assert again.returncode == EXIT_DENIED
    assert b"denied by the user" in again.stderr
    assert len(sim.folder_prompts()) == prompts + 2


def test_allow_always_needs_no_second_prompt_even_after_dom0_restarts(sim: Sim) -> None:
    target = mountpoint(sim, "work")
    prompts = len(sim.folder_prompts())
    sim.answer_folder("always rw")
    assert qvm_mount(sim, "work", "server", share(sim), target).returncode == 0
    assert len(grant_lines(sim)[0]) == 1
    result = sim.run("work", ["qvm-mount-folder", "--unmount", str(target)])
    assert result.returncode == 0, result.stderr
    sim.restart_daemon()
    result = qvm_mount(sim, "work", "server", share(sim), target)
    assert result.returncode == 0, result.stderr
    assert len(sim.folder_prompts()) == prompts + 1
    cat = sim.run("work", ["cat", str(target / "sub" / "inner.txt")])
    assert cat.stdout == b"inner\n", cat.stderr
    written = sim.run("work", ["sh", "-c", f"echo rw > {target}/written.txt"])
    assert written.returncode == 0, written.stderr
    assert share(sim, "written.txt").read_text() == "rw\n"
    share(sim, "written.txt").unlink()


def test_subfolder_of_an_always_grant(sim: Sim) -> None:
    sim.answer_folder("always rw")
    authorize(sim, "work", "server", share(sim))
    prompts = len(sim.folder_prompts())
    target = mountpoint(sim, "work")
    result = qvm_mount(sim, "work", "server", share(sim, "sub"), target)
    assert result.returncode == 0, result.stderr
    listing = sim.run("work", ["ls", str(target)])
    assert listing.stdout.split() == [b"deeper", b"inner.txt"]
    assert len(sim.folder_prompts()) == prompts


def test_read_only_grant_gives_erofs_from_the_server(sim: Sim) -> None:
    target = mountpoint(sim, "work")
    sim.answer_folder("once ro")  # the dialog downgrades the rw request
    result = qvm_mount(sim, "work", "server", share(sim), target)
    assert result.returncode == 0, result.stderr
    options = next(line.split()[3] for line in Path("/proc/self/mounts").read_text().splitlines()
                   if line.split()[1] == str(target))
    assert options.split(",")[0] == "rw"  # not a client-side ro: the server refuses
    write = sim.run("work", [sys.executable, "-c",
                             f"open({str(target / 'new.txt')!r}, 'w')"])
    assert write.returncode != 0
    assert f"[Errno {errno.EROFS}]".encode() in write.stderr
    assert not share(sim, "new.txt").exists()
    assert sim.run("work", ["cat", str(target / "hello.txt")]).returncode == 0


# --- refusals -------------------------------------------------------------------------


def test_deny_and_never(sim: Sim) -> None:
    target = mountpoint(sim, "work")
    sim.answer_folder("never")
    assert qvm_mount(sim, "work", "server", share(sim), target).returncode == EXIT_DENIED
    prompts = len(sim.folder_prompts())
    result = qvm_mount(sim, "work", "server", share(sim, "sub"), target)
    assert result.returncode == EXIT_DENIED  # remembered, covers subfolders
    assert len(sim.folder_prompts()) == prompts
    assert grant_lines(sim) == ([], [])


def test_block_denies_every_folder_without_asking(sim: Sim) -> None:
    target = mountpoint(sim, "work")
    sim.answer_folder("block")
    result = qvm_mount(sim, "work", "server", share(sim), target)
    assert result.returncode == EXIT_DENIED
    prompts = len(sim.folder_prompts())
    result = qvm_mount(sim, "work", "server", sim.home("server") / "outside", target)
    assert result.returncode == EXIT_DENIED
    assert b"blocked" in result.stderr
    assert len(sim.folder_prompts()) == prompts
    # other qubes are not blocked
    sim.answer_folder("deny")
    other = qvm_mount(sim, "other", "server", share(sim), mountpoint(sim, "other"))
    assert other.returncode == EXIT_DENIED and b"denied by the user" in other.stderr


def test_folder_outside_the_grant(sim: Sim) -> None:
    sim.answer_folder("always rw")
    fingerprint = authorize(sim, "work", "server", share(sim, "sub"))
    # Through qvm-mount-folder: the parent is not covered, dom0 asks again.
    prompts = len(sim.folder_prompts())
    sim.answer_folder("deny")
    target = mountpoint(sim, "work")
    assert qvm_mount(sim, "work", "server", share(sim), target).returncode == EXIT_DENIED
    assert len(sim.folder_prompts()) == prompts + 1
    # A client that uses the grant's fingerprint for another folder is refused by dom0.
    for folder in (share(sim), sim.home("server") / "outside", share(sim, "subx")):
        result = sim.call("work", "server", f"qsf.ConnectToFolder+{fingerprint}",
                          input=b64(folder))
        assert (result.returncode, result.stdout) == (0, b"error denied\n")


def test_missing_folder_and_not_a_directory(sim: Sim) -> None:
    target = mountpoint(sim, "work")
    sim.answer_folder("once", "once")
    missing = qvm_mount(sim, "work", "server", sim.home("server") / "nope", target)
    assert missing.returncode == EXIT_NO_FOLDER and b"no such folder" in missing.stderr
    notdir = qvm_mount(sim, "work", "server", sim.home("server") / "file", target)
    assert notdir.returncode == EXIT_NO_FOLDER and b"not a directory" in notdir.stderr


def test_bad_mount_point_asks_nobody(sim: Sim) -> None:
    prompts = len(sim.folder_prompts())
    result = qvm_mount(sim, "work", "server", share(sim), sim.home("work") / "absent")
    assert result.returncode == EXIT_MOUNT_POINT
    assert len(sim.folder_prompts()) == prompts


def test_forged_fingerprint_is_refused_by_qrexec(sim: Sim) -> None:
    result = sim.call("work", "server", "qsf.ConnectToFolder+" + "a" * 32, input=b64(share(sim)))
    assert result.returncode == QREXEC_REFUSED
    assert result.stdout == b""


def test_fingerprint_used_from_another_qube(sim: Sim) -> None:
    sim.answer_folder("always rw")
    fingerprint = authorize(sim, "work", "server", share(sim))
    stolen = sim.call("other", "server", f"qsf.ConnectToFolder+{fingerprint}",
                      input=b64(share(sim)))
    assert stolen.returncode == QREXEC_REFUSED
    # and a server qube cannot have dom0 confirm it for another client or server
    mismatch = sim.call("server", "dom0", f"qsf.QueryFolderAuthorization+{fingerprint}",
                        input=b"other\n" + b64(share(sim)))
    assert mismatch.stdout == b"deny mismatch\n"
    wrong_server = sim.call("other", "dom0", f"qsf.QueryFolderAuthorization+{fingerprint}",
                            input=b"work\n" + b64(share(sim)))
    assert wrong_server.stdout == b"deny mismatch\n"


def test_disposable_is_never_offered_always(sim: Sim) -> None:
    target = mountpoint(sim, "disp7")
    sim.answer_folder("always rw")
    result = qvm_mount(sim, "disp7", "server", share(sim), target)
    assert result.returncode == EXIT_DENIED  # "always" is not a choice it was given
    prompt = sim.folder_prompts()[-1]
    assert prompt["client"] == "disp7"
    assert "allow-always" not in prompt["choices"]  # type: ignore[operator]
    assert grant_lines(sim) == ([], [])
    sim.answer_folder("once rw")
    result = qvm_mount(sim, "disp7", "server", share(sim), target)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("client", "server"), [("work", "dom0"), ("work", "work")])
def test_dom0_as_server_and_loopback(sim: Sim, client: str, server: str) -> None:
    prompts = len(sim.folder_prompts())
    result = qvm_mount(sim, client, server, "/home/user", mountpoint(sim, client))
    assert result.returncode == EXIT_DENIED
    assert b"dom0 never shares" in result.stderr
    assert len(sim.folder_prompts()) == prompts


def test_unused_one_time_grant_expires(sim: Sim) -> None:
    sim.answer_folder("once rw")
    fingerprint = authorize(sim, "work", "server", share(sim))
    assert len(grant_lines(sim)[1]) == 1
    # Let 61 seconds pass for dom0: age the grant in the store.
    store = dom0_config(sim).store_path
    document = json.loads(store.read_text())
    for entry in document["decisions"]:
        entry["created"] -= 61
    store.write_text(json.dumps(document))
    result = sim.call("work", "server", f"qsf.ConnectToFolder+{fingerprint}", input=b64(share(sim)))
    assert (result.returncode, result.stdout) == (0, b"error denied\n")  # dom0: expired
    assert grant_lines(sim) == ([], [])  # and its policy line is gone
    again = sim.call("work", "server", f"qsf.ConnectToFolder+{fingerprint}", input=b64(share(sim)))
    assert again.returncode == QREXEC_REFUSED


def test_second_prompt_while_one_is_open_is_busy(sim: Sim) -> None:
    """An open dialog holds the client's prompt lock: hold it as dom0's dialog would."""
    state = dom0_config(sim).state_dir
    state.mkdir(parents=True, exist_ok=True)
    shutil.chown(state, *_owner(sim, "dom0"))
    lock_path = state / "prompt-work.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    os.fchown(fd, *_owner(sim, "dom0"))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        prompts = len(sim.folder_prompts())
        result = qvm_mount(sim, "work", "server", share(sim), mountpoint(sim, "work"))
        assert result.returncode == EXIT_DENIED
        assert b"another request from this qube is waiting" in result.stderr
        assert len(sim.folder_prompts()) == prompts
    finally:
        os.close(fd)
    sim.answer_folder("deny")
    after = qvm_mount(sim, "work", "server", share(sim), mountpoint(sim, "work"))
    assert b"denied by the user" in after.stderr


def test_at_most_three_prompts_a_minute(sim: Sim) -> None:
    sim.answer_folder("deny", "deny", "deny")
    target = mountpoint(sim, "work")
    for _ in range(3):
        assert b"denied by the user" in qvm_mount(sim, "work", "server", share(sim),
                                                  target).stderr
    prompts = len(sim.folder_prompts())
    fourth = qvm_mount(sim, "work", "server", share(sim), target)
    assert fourth.returncode == EXIT_DENIED and b"too many prompts" in fourth.stderr
    assert len(sim.folder_prompts()) == prompts


# --- malformed input to each service --------------------------------------------------


def _dom0_files(sim: Sim) -> dict[str, bytes]:
    config = dom0_config(sim)
    paths = [config.store_path, config.grants_dir / policy.GRANTS_FILE,
             config.once_dir / policy.ONCE_FILE]
    return {str(p): p.read_bytes() for p in paths if p.exists()}


@pytest.mark.parametrize(
    "data",
    [b"", b"server\n", b"server\n!!!\nrw\n", b"ser ver\nLw==\nrw\n", b"server\nLw==\nrx\n",
     b"server\n" + base64.b64encode(b"/a/../b") + b"\nrw\n", b"x" * 100_000],
)
def test_malformed_authorize(sim: Sim, data: bytes) -> None:
    before = _dom0_files(sim)
    result = sim.call("work", "dom0", "qsf.AuthorizeFolderAccess", input=data)
    assert (result.returncode, result.stdout) == (0, b"deny invalid\n")
    assert _dom0_files(sim) == before
    assert "invalid request" in sim.service_log("dom0").splitlines()[-1]


@pytest.mark.parametrize(
    ("argument", "data"),
    [("0" * 32, b"work\n!!\n"), ("0" * 32, b"work\n"), ("ZZ", b"work\n" + b64("/home")),
     ("0" * 32, b"@anyvm\n" + b64("/home"))],
)
def test_malformed_query(sim: Sim, argument: str, data: bytes) -> None:
    before = _dom0_files(sim)
    result = sim.call("server", "dom0", f"qsf.QueryFolderAuthorization+{argument}", input=data)
    assert (result.returncode, result.stdout) == (0, b"deny invalid\n")
    assert _dom0_files(sim) == before


@pytest.mark.parametrize("data", [b"", b"!!!\n", b64("relative"), b64("/a/./b"), b"A" * 9000])
def test_malformed_connect_never_reaches_dom0(sim: Sim, data: bytes) -> None:
    sim.answer_folder("once rw")
    fingerprint = authorize(sim, "work", "server", share(sim))
    before = _dom0_files(sim)
    result = sim.call("work", "server", f"qsf.ConnectToFolder+{fingerprint}", input=data)
    assert (result.returncode, result.stdout) == (0, b"error denied\n")
    assert _dom0_files(sim) == before  # the one-time grant was not consumed


def test_killed_channel_gives_errors_not_hangs(sim: Sim) -> None:
    target = mountpoint(sim, "work")
    sim.answer_folder("once rw")
    result = qvm_mount(sim, "work", "server", share(sim), target)
    assert result.returncode == 0, result.stderr
    channels = [int(pid) for pid in os.listdir("/proc") if pid.isdigit()
                and _cmdline(pid).find("qsf.ConnectToFolder+") >= 0
                and str(sim.socket("work")) in _cmdline(pid)]
    assert len(channels) == 1
    os.kill(channels[0], 9)
    cat = sim.run("work", ["cat", str(target / "hello.txt")], timeout=30)
    assert cat.returncode != 0
    assert b"Input/output error" in cat.stderr or b"not connected" in cat.stderr, cat.stderr
    # the server side saw EOF and ended
    assert wait_until(lambda: not any("qsf_server" in c for c in live_processes(sim.root)))


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


# --- dom0's qvm-folder-share on the simulated dom0 ------------------------------------


def test_qvm_folder_share_grants_ahead_records_use_and_revokes(sim: Sim) -> None:
    env = {**os.environ, "QSF_DOM0_ROOT": str(qube_dir(sim.root, "dom0"))}

    def cli(*args: str) -> str:
        done = subprocess.run([support.venv_program("qvm-folder-share"), *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    grant = cli("allow", "--read-only", "work", "server", str(share(sim))).split()[0]
    prompts = len(sim.folder_prompts())
    target = mountpoint(sim, "work")
    result = qvm_mount(sim, "work", "server", share(sim, "sub"), target, "--read-only")
    assert result.returncode == 0, result.stderr
    assert len(sim.folder_prompts()) == prompts  # decided ahead: no dialog
    [row] = json.loads(cli("list", "--json"))
    assert (row["id"], row["mode"], row["pending"]) == (grant, "ro", False)
    assert row["last_used"] is not None  # recorded by qsf.QueryFolderAuthorization
    assert sim.run("work", ["qvm-mount-folder", "--unmount", str(target)]).returncode == 0
    assert cli("revoke", "--client", "work").startswith(f"revoked {grant} ")
    assert grant_lines(sim) == ([], [])
    sim.answer_folder("deny")
    assert qvm_mount(sim, "work", "server", share(sim), target).returncode == EXIT_DENIED
    assert len(sim.folder_prompts()) == prompts + 1  # asked again once revoked
