"""qsf_sim end to end: a running daemon, qubes with their own users, the real client.

One simulator serves the whole module (starting one takes about half a second);
each test writes its own policy files, which are removed after it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import support

from qsf_sim.layout import Qube, policy_dirs
from qsf_sim.runas import lookup
from qsf_sim.sim import Sim
from qsf_sim.tree import AUTHORIZE, DOM0_SERVICES, REPO

ECHO = "#!/bin/sh\nprintf 'got:'\ncat\nexit 3\n"
# Prints its argv and environment as NUL-separated KEY=VALUE, then its uid and cwd.
SHOW = f"""#!{sys.executable}
import os, sys
for key, value in sorted(os.environ.items()):
    sys.stdout.write(f"{{key}}={{value}}\\0")
sys.stdout.write(f"ARGV={{sys.argv[1:]!r}}\\0UID={{os.getuid()}}\\0CWD={{os.getcwd()}}\\0")
"""


def make_root() -> Path:
    """A root every qube user can reach (pytest's tmp_path sits under a 0700 directory)."""
    root = Path(tempfile.mkdtemp(prefix="qsfsim-test-", dir="/tmp"))
    root.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def running_sim() -> Iterator[Sim]:
    if os.geteuid() != 0:
        support.missing("root (qsf_sim gives every simulated qube its own Unix user)")
    support.need_program("setpriv")
    root = make_root()
    sim = Sim(root / "sim", ["work", "server", "other", Qube("dvm", template_for_dispvms=True)])
    try:
        with sim:
            sim.install_service("server", "test.Echo", ECHO)
            sim.install_service("server", "test.Show", SHOW)
            sim.install_service("dom0", "test.Show", SHOW)
            yield sim
    finally:
        shutil.rmtree(root)


@pytest.fixture
def sim(running_sim: Sim) -> Iterator[Sim]:
    """The module's simulator; policy files written by the test are removed after it."""
    before = {p for d in policy_dirs(running_sim.root) for p in d.iterdir()}
    yield running_sim
    for directory in policy_dirs(running_sim.root):
        for path in directory.iterdir():
            if path not in before:
                path.unlink()


def allow(sim: Sim, *lines: str, name: str = "30-test.policy", runtime: bool = False) -> None:
    sim.install_policy(name, "".join(line + "\n" for line in lines), runtime=runtime)


def show(sim: Sim, source: str, target: str, service: str,
         env: dict[str, str] | None = None) -> dict[str, str]:
    result = sim.run(source, ["qrexec-client-vm", target, service], env=env)
    assert result.returncode == 0, result.stderr
    fields = result.stdout.decode().split("\0")[:-1]
    return dict(field.split("=", 1) for field in fields)


# --- stdio and exit codes ----------------------------------------------------------------


def test_allowed_call_joins_stdio_and_returns_the_service_status(sim: Sim) -> None:
    allow(sim, "test.Echo * work server allow")
    result = sim.call("work", "server", "test.Echo", input=b"hello")
    assert (result.returncode, result.stdout) == (3, b"got:hello"), result.stderr


def test_refused_call_exits_126(sim: Sim) -> None:
    allow(sim, "test.Echo * work server deny", "test.Echo * @anyvm @anyvm allow")
    result = sim.call("work", "server", "test.Echo", input=b"x")
    assert result.returncode == 126
    assert b"Request refused" in result.stderr
    assert result.stdout == b""
    assert sim.call("other", "server", "test.Echo").returncode == 3  # the next line


def test_no_matching_rule_exits_126(sim: Sim) -> None:
    assert sim.call("work", "server", "test.Echo").returncode == 126


def test_missing_service_exits_127(sim: Sim) -> None:
    allow(sim, "* * work server allow")
    assert sim.call("work", "server", "test.NoSuchService").returncode == 127


def test_other_failures_exit_125(sim: Sim) -> None:
    # the daemon cannot be reached
    result = sim.run("work", [sys.executable, "-m", "qsf_sim.client_vm", "--sim-socket",
                              str(sim.root / "nonexistent"), "server", "test.Echo"])
    assert result.returncode == 125
    # allowed to a disposable, which the simulator cannot create
    allow(sim, "test.Echo * work @dispvm:dvm allow")
    assert sim.call("work", "@dispvm:dvm", "test.Echo").returncode == 125


def test_halted_qube_cannot_be_called_until_it_runs_again(sim: Sim) -> None:
    allow(sim, "test.Echo * work server allow")
    sim.set_running("server", False)
    try:
        result = sim.call("work", "server", "test.Echo", input=b"x")
        assert result.returncode == 125
        assert b"qube server could not be started" in result.stderr
        # policy is evaluated first, as in Qubes: a refused call stays refused
        assert sim.call("other", "server", "test.Echo").returncode == 126
    finally:
        sim.set_running("server", True)
    assert sim.call("work", "server", "test.Echo", input=b"x").returncode == 3


def test_service_killed_by_signal_exits_128_plus_signal(sim: Sim) -> None:
    sim.install_service("server", "test.Suicide", "#!/bin/sh\nkill -TERM $$\nsleep 5\n")
    allow(sim, "test.Suicide * work server allow")
    assert sim.call("work", "server", "test.Suicide").returncode == 128 + 15


def test_usage_error_exits_2(sim: Sim) -> None:
    result = sim.run("work", ["qrexec-client-vm", "server"])
    assert result.returncode == 2
    assert b"usage" in result.stderr


def test_escape_filtering_on_request(sim: Sim) -> None:
    allow(sim, "test.Echo * work server allow")
    raw = sim.call("work", "server", "test.Echo", input=b"\x1b[31mred\x07\n")
    assert raw.stdout == b"got:\x1b[31mred\x07\n"  # not a terminal: untouched
    filtered = sim.run("work", ["qrexec-client-vm", "-t", "server", "test.Echo"],
                       input=b"\x1b[31mred\x07\n")
    assert filtered.stdout == b"got:_[31mred_\n"


def test_socket_from_the_environment_still_checked_by_peer_uid(sim: Sim) -> None:
    allow(sim, "test.Echo * @anyvm @anyvm allow")
    client = [sys.executable, "-m", "qsf_sim.client_vm", "server", "test.Echo"]
    as_work = sim.run("work", client, env={"QSF_SIM_QREXEC_SOCKET": str(sim.socket("work"))})
    assert as_work.returncode == 3
    as_root = subprocess.run(client, env={**os.environ,
                                          "QSF_SIM_QREXEC_SOCKET": str(sim.socket("work"))},
                             capture_output=True, check=False, timeout=30)
    assert as_root.returncode == 125


def test_eof_reaches_the_service_and_large_data_is_intact(sim: Sim) -> None:
    sim.install_service("server", "test.Hash", "#!/bin/sh\nexec sha256sum\n")
    allow(sim, "test.Hash * work server allow")
    data = os.urandom(3 * 1024 * 1024 + 17)
    result = sim.call("work", "server", "test.Hash", input=data)
    assert result.returncode == 0
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_half_close_in_both_directions(sim: Sim) -> None:
    """The service's stdout EOF reaches the caller while its stdin stays open, and back."""
    got = sim.home("server") / "got"
    sim.install_service("server", "test.Half",
                        "#!/bin/sh\nprintf early\nexec 1>&-\ncat > \"$HOME/got\"\n")
    allow(sim, "test.Half * work server allow")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        client = sim.popen("work", ["qrexec-client-vm", "server", "test.Half"],
                           stdin=theirs.fileno(), stdout=theirs.fileno())
        theirs.close()
        try:
            ours.settimeout(10)
            received = b""
            while chunk := ours.recv(4096):  # ends at the service's EOF, our side still open
                received += chunk
            assert received == b"early"
            assert client.poll() is None
            ours.sendall(b"late data")
            ours.shutdown(socket.SHUT_WR)  # our EOF ends the service's cat
            assert client.wait(10) == 0
        finally:
            client.kill()
            client.wait()
    assert got.read_bytes() == b"late data"


# --- the service's world -----------------------------------------------------------------


def test_service_environment_and_argument(sim: Sim) -> None:
    allow(sim, "test.Show * work server allow")
    caller_env = {"QREXEC_REMOTE_DOMAIN": "forged", "QREXEC_INJECTED": "1", "PLAIN": "1"}
    env = show(sim, "work", "server", "test.Show+arg-1.x", caller_env)
    qrexec = {k: v for k, v in env.items() if k.startswith("QREXEC")}
    assert qrexec == {"QREXEC_REMOTE_DOMAIN": "work",
                      "QREXEC_SERVICE_FULL_NAME": "test.Show+arg-1.x",
                      "QREXEC_SERVICE_ARGUMENT": "arg-1.x",
                      "QREXEC_REQUESTED_TARGET_TYPE": ""}
    assert "PLAIN" not in env
    assert env["ARGV"] == "['arg-1.x']"
    assert env["UID"] == str(lookup("server").uid)
    assert env["CWD"] == env["HOME"] == str(sim.home("server"))
    assert env["PATH"].split(":")[0] == str(sim.root / "qubes" / "server" / "bin")


def test_argument_presence_and_sanitizing(sim: Sim) -> None:
    allow(sim, "test.Show * work server allow")
    no_plus = show(sim, "work", "server", "test.Show")
    assert "QREXEC_SERVICE_ARGUMENT" not in no_plus
    assert no_plus["QREXEC_SERVICE_FULL_NAME"] == "test.Show"
    assert no_plus["ARGV"] == "[]"
    empty = show(sim, "work", "server", "test.Show+")
    assert empty["QREXEC_SERVICE_ARGUMENT"] == ""
    assert empty["ARGV"] == "[]"
    dirty = show(sim, "work", "server", "test.Show+a/b c;$d+e")
    assert dirty["QREXEC_SERVICE_ARGUMENT"] == "a_b_c__d+e"
    assert dirty["ARGV"] == "['a_b_c__d+e']"
    dash = show(sim, "work", "server", "test.Show+-rf")
    assert dash["ARGV"] == "['-rf']"


def test_dom0_service_environment(sim: Sim) -> None:
    allow(sim, "test.Show * work @adminvm allow")
    by_name = show(sim, "work", "dom0", "test.Show")
    assert by_name["QREXEC_REQUESTED_TARGET_TYPE"] == "name"
    assert by_name["QREXEC_REQUESTED_TARGET"] == "dom0"
    assert "QREXEC_REQUESTED_TARGET_KEYWORD" not in by_name
    by_keyword = show(sim, "work", "@adminvm", "test.Show")
    assert by_keyword["QREXEC_REQUESTED_TARGET_TYPE"] == "keyword"
    assert by_keyword["QREXEC_REQUESTED_TARGET_KEYWORD"] == "adminvm"
    assert "QREXEC_REQUESTED_TARGET" not in by_keyword
    assert by_keyword["UID"] == str(lookup("dom0").uid) != "0"  # dom0 has its own user too
    assert by_keyword["QSF_DOM0_ROOT"] == str(sim.root / "qubes" / "dom0")
    allow(sim, "test.Show * work @default allow target=dom0", name="20-default.policy")
    by_default = show(sim, "work", "", "test.Show")
    assert by_default["QREXEC_REQUESTED_TARGET_TYPE"] == "keyword"
    assert by_default["QREXEC_REQUESTED_TARGET_KEYWORD"] == "default"


def test_service_lookup_order(sim: Sim) -> None:
    allow(sim, "test.Look * work server allow")
    files = [("test.Look+x", True, "local-arg"), ("test.Look+x", False, "system-arg"),
             ("test.Look", True, "local"), ("test.Look", False, "system")]
    paths = [sim.install_service("server", name, f"#!/bin/sh\necho {text}\n", local=local)
             for name, local, text in files]
    for path, (_, _, text) in zip(paths, files, strict=True):
        assert sim.call("work", "server", "test.Look+x").stdout == f"{text}\n".encode()
        path.chmod(0o644)  # not executable: skipped, as if absent
    assert sim.call("work", "server", "test.Look+x").returncode == 127
    paths[2].chmod(0o755)
    assert sim.call("work", "server", "test.Look+y").stdout == b"local\n"


# --- policy, as the daemon applies it ----------------------------------------------------


def test_first_match_wins_across_files_in_name_order(sim: Sim) -> None:
    allow(sim, "test.Echo * work server deny", name="20-deny.policy")
    allow(sim, "test.Echo * work server allow", name="10-allow.policy")
    assert sim.call("work", "server", "test.Echo").returncode == 3
    allow(sim, "test.Echo * work server deny", name="05-deny.policy", runtime=True)
    assert sim.call("work", "server", "test.Echo").returncode == 126


def test_runtime_file_hides_persistent_file_of_the_same_name(sim: Sim) -> None:
    allow(sim, "test.Echo * work server allow", name="30-same.policy")
    assert sim.call("work", "server", "test.Echo").returncode == 3
    allow(sim, "# nothing", name="30-same.policy", runtime=True)
    assert sim.call("work", "server", "test.Echo").returncode == 126


def test_syntax_error_or_bad_file_name_anywhere_denies_every_call(sim: Sim) -> None:
    allow(sim, "test.Echo * work server allow", name="10-ok.policy")
    assert sim.call("work", "server", "test.Echo").returncode == 3
    allow(sim, "garbage", name=".hidden.policy")  # dot-files are ignored
    allow(sim, "garbage", name="99-notes.txt")  # so are other suffixes
    assert sim.call("work", "server", "test.Echo").returncode == 3
    bad = sim.install_policy("99-zz.policy", "test.Echo * work server allow bogus=1\n",
                             runtime=True)
    assert sim.call("work", "server", "test.Echo").returncode == 126
    bad.unlink()
    bad_name = sim.install_policy("50-Upper.policy", "test.Echo * work server allow\n")
    assert sim.call("work", "server", "test.Echo").returncode == 126
    bad_name.unlink()
    assert sim.call("work", "server", "test.Echo").returncode == 3


def test_anyvm_does_not_reach_dom0_and_loopback_is_refused(sim: Sim) -> None:
    allow(sim, "test.Show * @anyvm @anyvm allow", "test.Echo * * * allow")
    assert sim.call("work", "dom0", "test.Show").returncode == 126
    assert sim.call("work", "server", "test.Show").returncode == 0
    assert sim.call("server", "server", "test.Echo").returncode == 126


def test_tag_and_redirect_through_the_daemon(running_sim: Sim, sim: Sim) -> None:
    allow(sim, "test.Echo * work @default allow target=server")
    result = sim.call("work", "", "test.Echo", input=b"d")
    assert (result.returncode, result.stdout) == (3, b"got:d")


def test_ask_uses_scripted_answers_and_logs_prompts(sim: Sim) -> None:
    allow(sim, "test.Echo * work @anyvm ask default_target=server")
    before = len(sim.prompts())
    sim.answer("allow", "deny", "allow other")
    assert sim.call("work", "server", "test.Echo", input=b"1").stdout == b"got:1"
    assert sim.call("work", "server", "test.Echo").returncode == 126
    # the user chose `other`, which has no test.Echo: the call went there
    assert sim.call("work", "server", "test.Echo").returncode == 127
    assert sim.call("work", "server", "test.Echo").returncode == 126  # no answer left
    prompts = sim.prompts()[before:]
    assert [p["answer"] for p in prompts] == ["allow", "deny", "allow other", "deny"]
    assert prompts[0]["source"] == "work" and prompts[0]["default"] == "server"
    assert "dom0" not in prompts[0]["choices"]  # type: ignore[operator]


# --- identity ----------------------------------------------------------------------------


def test_root_cannot_call_through_a_qube_socket(sim: Sim) -> None:
    """Root bypasses the socket's file mode; SO_PEERCRED still refuses it."""
    marker = sim.home("server") / "ran"
    sim.install_service("server", "test.Mark", "#!/bin/sh\ntouch \"$HOME/ran\"\n")
    allow(sim, "test.Mark * @anyvm @anyvm allow")
    result = subprocess.run([sys.executable, "-m", "qsf_sim.client_vm", "--sim-socket",
                             str(sim.socket("work")), "server", "test.Mark"],
                            capture_output=True, check=False, timeout=30)
    assert result.returncode == 125
    assert not marker.exists()
    assert "refused (not the qube's user)" in sim.daemon_log()


def test_another_qubes_user_cannot_use_a_qube_socket(sim: Sim) -> None:
    marker = sim.home("server") / "ran2"
    sim.install_service("server", "test.Mark2", "#!/bin/sh\ntouch \"$HOME/ran2\"\n")
    allow(sim, "test.Mark2 * @anyvm @anyvm allow")
    forged = [sys.executable, "-m", "qsf_sim.client_vm", "--sim-socket",
              str(sim.socket("work")), "server", "test.Mark2"]
    # as `other`, through work's socket: the socket's mode (0600, work's user) stops it
    assert sim.run("other", forged).returncode == 125
    # even with the file mode opened up, the daemon checks the peer's uid
    mode = stat.S_IMODE(sim.socket("work").stat().st_mode)
    assert mode == 0o600
    sim.socket("work").chmod(0o666)
    try:
        assert sim.run("other", forged).returncode == 125
    finally:
        sim.socket("work").chmod(mode)
    assert not marker.exists()
    assert sim.run("work", forged).returncode == 0  # the right user, the right socket
    assert marker.exists()


# --- hostile bytes on a qube's socket ----------------------------------------------------

# Sends raw bytes as the qube's user and prints the daemon's first reply frame type
# (or "closed"); the stream given on argv[2] is a Python bytes literal.
RAW_CLIENT = """
import ast, socket, struct, sys
conn = socket.socket(socket.AF_UNIX)
conn.connect(sys.argv[1])
conn.settimeout(20)
conn.sendall(ast.literal_eval(sys.argv[2]))
header = conn.recv(5)
print(header[0] if len(header) == 5 else "closed")
"""


def header(kind: int, length: int) -> bytes:
    return struct.pack("<BI", kind, length)


@pytest.mark.parametrize(("stream", "reply"), [
    (header(6, 3) + b"abc", "5"),  # DATA before REQUEST: FAIL
    (header(1, 9) + b"wrong/1\0x", "5"),  # bad magic: FAIL
    (header(1, 15) + b"qsf-sim/1\0a\0b\0c", "5"),  # too many fields: FAIL
    (header(1, 2000) + b"x" * 2000, "5"),  # request too long: FAIL
    (header(99, 0), "closed"),  # unknown frame type
    (header(6, 10_000_000), "closed"),  # oversized frame
    (header(1, 20) + b"qsf-sim/1\0\xff\xfe\0test.Echo", "3"),  # non-ASCII target: REFUSE
    (header(1, 17) + b"qsf-sim/1\0server\0", "3"),  # no service name: REFUSE
])
def test_malformed_requests_are_answered_and_the_daemon_survives(
        sim: Sim, stream: bytes, reply: str) -> None:
    allow(sim, "test.Echo * work server allow")
    result = sim.run("work", [sys.executable, "-c", RAW_CLIENT, str(sim.socket("work")),
                              repr(stream)])
    assert result.stdout.decode().strip() == reply, result.stderr
    assert sim.call("work", "server", "test.Echo", input=b"ok").stdout == b"got:ok"


def test_truncated_request_then_disconnect(sim: Sim) -> None:
    allow(sim, "test.Echo * work server allow")
    result = sim.run("work", [sys.executable, "-c", RAW_CLIENT.replace(
        "header = conn.recv(5)", "conn.shutdown(socket.SHUT_WR)\nheader = conn.recv(5)"),
        str(sim.socket("work")), repr(header(1, 50) + b"qsf-sim/1\0")])
    assert result.stdout.decode().strip() == "closed"
    assert sim.call("work", "server", "test.Echo", input=b"ok").stdout == b"got:ok"


def test_caller_killed_mid_call_ends_the_service(sim: Sim) -> None:
    pid_file = sim.home("server") / "sleeper.pid"
    sim.install_service("server", "test.Sleep", "#!/bin/sh\necho $$ > \"$HOME/sleeper.pid\"\n"
                        "echo started\nexec sleep 600\n")
    allow(sim, "test.Sleep * work server allow")
    client = sim.popen("work", ["qrexec-client-vm", "server", "test.Sleep"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"started\n"
        pid = int(pid_file.read_text())
    finally:
        client.kill()
        client.wait()
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "the service outlived its caller"


# --- LOCAL_PROGRAM -----------------------------------------------------------------------

LOCAL = """\
import os, stat, sys
checks = [stat.S_ISSOCK(os.fstat(fd).st_mode) for fd in (0, 1)]
saved_out = int(os.environ["SAVED_FD_1"])
saved_in = int(os.environ["SAVED_FD_0"])
os.write(1, b"ping\\n")
os.close(1)
reply = sys.stdin.readline()
caller_input = os.read(saved_in, 100)
os.write(saved_out, f"sockets={checks} reply={reply.strip()} input={caller_input!r}\\n".encode())
sys.stderr.write("local stderr\\n")
sys.exit(5)
"""


def test_local_program_on_socketpairs(sim: Sim) -> None:
    sim.install_service("server", "test.Pong",
                        "#!/bin/sh\nread line\necho \"pong:$line\"\n")
    allow(sim, "test.Pong * work server allow")
    result = sim.call("work", "server", "test.Pong", input=b"from caller",
                      local_program=[sys.executable, "-c", LOCAL])
    assert result.returncode == 5
    assert result.stdout == b"sockets=[True, True] reply=pong:ping input=b'from caller'\n"
    assert b"local stderr" in result.stderr


def test_local_program_starts_only_after_the_call_is_allowed(sim: Sim) -> None:
    marker = sim.home("work") / "started"
    result = sim.call("work", "server", "test.Pong",
                      local_program=["touch", str(marker)])
    assert result.returncode == 126
    assert not marker.exists()


# --- set-up ------------------------------------------------------------------------------


def test_project_files_are_installed_as_packages_would(sim: Sim) -> None:
    services = sorted(p for p in (REPO / "qubes-rpc").glob("*") if p.is_file())
    if not services:
        pytest.skip("the project has no qrexec services yet")
    for source in services:
        holders = ["dom0"] if source.name in DOM0_SERVICES else ["work", "server", "other"]
        for qube in holders:
            installed = sim.root / "qubes" / qube / "etc" / "qubes-rpc" / source.name
            assert installed.stat().st_mode & 0o111
            if source.name == AUTHORIZE:  # the same code with the simulator's dialog
                assert b"-m qsf_sim.dom0_services scripted" in installed.read_bytes()
            else:
                assert installed.read_bytes() == source.read_bytes()
        absent = "work" if holders == ["dom0"] else "dom0"
        assert not (sim.root / "qubes" / absent / "etc" / "qubes-rpc" / source.name).exists()
    for source in (REPO / "policy").glob("*.policy"):
        installed = policy_dirs(sim.root)[1] / source.name
        assert installed.read_text() == source.read_text()
    # the project's policy forbids direct connections to a folder
    assert sim.call("work", "server", "qsf.ConnectToFolder+" + "0" * 32).returncode == 126


def test_qsf_dom0_dialog_takes_scripted_answers(sim: Sim) -> None:
    if not (REPO / "qubes-rpc" / AUTHORIZE).is_file():
        pytest.skip("the project has no qsf.AuthorizeFolderAccess yet")
    request = b"server\n" + base64.b64encode(b"/home/user/shared") + b"\nro\n"
    before = len(sim.folder_prompts())
    sim.answer_folder("once", "deny")
    allowed = sim.call("work", "dom0", AUTHORIZE, input=request)
    assert allowed.returncode == 0
    assert re.fullmatch(rb"allow [0-9a-f]{32} ro\n", allowed.stdout), allowed.stdout
    denied = sim.call("work", "dom0", AUTHORIZE, input=request)
    assert denied.stdout.startswith(b"deny ")
    prompts = sim.folder_prompts()[before:]
    assert [(p["client"], p["server"], p["answer"]) for p in prompts] == [
        ("work", "server", "allow-once"), ("work", "server", "deny-once")]
    with pytest.raises(ValueError):
        sim.answer_folder("maybe")


def test_each_qube_has_its_own_user_and_private_home(sim: Sim) -> None:
    uids = {lookup(name).uid for name in ("dom0", "work", "server", "other")}
    assert len(uids) == 4 and 0 not in uids
    result = sim.run("other", ["cat", str(sim.home("work") / "anything")])
    assert b"Permission denied" in result.stderr


def test_daemon_restart_keeps_the_configuration(sim: Sim) -> None:
    allow(sim, "test.Echo * work server allow")
    sim.restart_daemon()
    assert sim.call("work", "server", "test.Echo").returncode == 3


def test_private_mount_namespace_home() -> None:
    if os.geteuid() != 0:
        support.missing("root (mount namespaces)")
    support.need_program("unshare")
    root = make_root()
    try:
        with Sim(root / "sim", ["work", "server"], private_home=True,
                 project_files=False) as sim:
            sim.install_service("server", "test.Home",
                                "#!/bin/sh\necho \"$HOME $(pwd) $(id -u)\"\necho hi > marker\n")
            sim.install_policy("30-test.policy", "test.Home * work server allow\n")
            result = sim.call("work", "server", "test.Home")
            assert result.stdout == f"/home/user /home/user {lookup('server').uid}\n".encode()
            assert (sim.home("server") / "marker").read_text() == "hi\n"
            inside = sim.run("work", ["sh", "-c", "echo $HOME; pwd"])
            assert inside.stdout == b"/home/user\n/home/user\n"
    finally:
        shutil.rmtree(root)


def test_cli_help_and_socket_path(running_sim: Sim) -> None:
    program = support.venv_program("qsf-sim")
    help_text = subprocess.run([program, "--help"], capture_output=True, check=True).stdout
    assert b"qrexec" in help_text
    path = subprocess.run([program, "socket", "--root", str(running_sim.root), "work"],
                          capture_output=True, check=True, text=True).stdout.strip()
    assert path == str(running_sim.socket("work"))
