"""qvm-mount-folder with faked side effects: every call must be expected, in order."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from qsf_mount import cli, mounts
from qsf_mount.system import Completed, KernelMount

FP = "0123456789abcdef0123456789abcdef"
QREXEC = "/usr/bin/qrexec-client-vm"
FUSE = "/usr/bin/qsf-fuse"
B64 = base64.b64encode(b"/home/user/share") + b"\n"
RFD, WFD = 10, 11


class Expected:
    """The expected-calls table: (name, args) -> result, consumed in order."""

    def __init__(self, calls: list[tuple[str, tuple[Any, ...], Any]]) -> None:
        self.calls = list(calls)

    def __call__(self, name: str, *args: Any) -> Any:
        assert self.calls, f"unexpected call {name}{args!r}"
        want_name, want_args, result = self.calls.pop(0)
        assert (name, args) == (want_name, want_args), f"expected {want_name}{want_args!r}"
        if isinstance(result, BaseException):
            raise result
        return result

    def done(self) -> None:
        assert not self.calls, f"calls not made: {self.calls!r}"


class FakeChannel:
    def __init__(self, expected: Expected) -> None:
        self.expected = expected

    read_fd = RFD
    write_fd = WFD

    def send(self, data: bytes) -> None:
        self.expected("channel.send", data)

    def read_line(self, limit: int) -> bytes | None:
        return self.expected("channel.read_line", limit)  # type: ignore[no-any-return]

    def wait(self) -> int:
        return self.expected("channel.wait")  # type: ignore[no-any-return]

    def detach(self) -> None:
        self.expected("channel.detach")

    def abort(self) -> None:
        self.expected("channel.abort")


class FakeSystem:
    def __init__(self, calls: list[tuple[str, tuple[Any, ...], Any]],
                 programs: Sequence[str] = ("qrexec-client-vm", "qsf-fuse", "fusermount3"),
                 kernel: KernelMount | None = None,
                 store: Path = Path("/nonexistent/qsf/shares.json")) -> None:
        self.expected = Expected(calls)
        self.programs = {name: f"/usr/bin/{name}" for name in programs}
        self.kernel = kernel
        self.store = store

    def find_program(self, name: str) -> str | None:
        return self.programs.get(name)

    def kernel_mount(self) -> KernelMount | None:
        return self.kernel

    def kernel_availability(self) -> tuple[bool, str]:
        return (True, "usable") if self.kernel else (False, "no v9fs in this kernel")

    def kernel_unmount(self, mountpoint: str) -> None:
        self.expected("kernel_unmount", mountpoint)

    def mount_point_problem(self, path: str) -> str | None:
        return self.expected("mount_point_problem", path)  # type: ignore[no-any-return]

    def call(self, argv: Sequence[str], data: bytes, limit: int) -> Completed:
        return self.expected("call", list(argv), data, limit)  # type: ignore[no-any-return]

    def open_channel(self, argv: Sequence[str]) -> FakeChannel:
        self.expected("open_channel", list(argv))
        return FakeChannel(self.expected)

    def run(self, argv: Sequence[str], pass_fds: Sequence[int] = ()) -> int:
        return self.expected("run", list(argv), tuple(pass_fds))  # type: ignore[no-any-return]

    def read_mounts(self) -> str:
        return self.expected("read_mounts")  # type: ignore[no-any-return]

    def share_store(self) -> Path:
        return self.store

    def sleep(self, seconds: float) -> None:
        self.expected("sleep", seconds)

    def notify(self, summary: str, body: str) -> None:
        self.expected("notify", summary, body)


def authorize_call(
    reply: bytes, status: int = 0, mode: str = "rw"
) -> tuple[str, tuple[Any, ...], Any]:
    data = b"vault\n" + B64 + mode.encode() + b"\n"
    return ("call", ([QREXEC, "dom0", "qsf.AuthorizeFolderAccess"], data, 65),
            Completed(status, reply))


CONNECT = ("open_channel", ([QREXEC, "vault", f"qsf.ConnectToFolder+{FP}"],), None)
SEND = ("channel.send", (B64,), None)
MOUNTPOINT_OK = ("mount_point_problem", ("/mnt/share",), None)
ARGS = ["vault", "/home/user/share", "/mnt/share"]


def fuse_run(options: str, status: int = 0) -> tuple[str, tuple[Any, ...], Any]:
    argv = [FUSE, "--rfd", str(RFD), "--wfd", str(WFD), "-o", options, "/mnt/share"]
    return ("run", (argv, (RFD, WFD)), status)


def run(system: FakeSystem, args: list[str]) -> int:
    code = cli.main(args, system)
    system.expected.done()
    return code


def test_mount_with_fuse(capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem([
        MOUNTPOINT_OK,
        authorize_call(f"allow {FP} rw\n".encode()),
        CONNECT, SEND, ("channel.read_line", (64,), b"ok rw"),
        fuse_run("fsname=qvm://vault/home/user/share,subtype=qsf"),
        ("channel.detach", (), None),
    ])
    assert run(system, ARGS) == 0
    # auto (the default) says which backend it chose, and nothing else.
    assert capsys.readouterr().err == "qvm-mount-folder: the fuse backend (auto)\n"


def test_an_explicit_backend_mounts_silently(capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem([
        MOUNTPOINT_OK,
        authorize_call(f"allow {FP} rw\n".encode()),
        CONNECT, SEND, ("channel.read_line", (64,), b"ok rw"),
        fuse_run("fsname=qvm://vault/home/user/share,subtype=qsf"),
        ("channel.detach", (), None),
    ])
    assert run(system, ["--backend=fuse", *ARGS]) == 0
    assert capsys.readouterr().err == ""


def test_read_only_request_and_extra_options() -> None:
    system = FakeSystem([
        MOUNTPOINT_OK,
        authorize_call(f"allow {FP} ro\n".encode(), mode="ro"),
        CONNECT, SEND, ("channel.read_line", (64,), b"ok ro"),
        fuse_run("fsname=qvm://vault/home/user/share,subtype=qsf,ro,noexec,nodev"),
        ("channel.detach", (), None),
    ])
    assert run(system, ["--read-only", "-o", "noexec,,nodev", *ARGS]) == 0


def test_read_only_grant_is_left_to_the_server() -> None:
    """An rw request granted ro adds no `ro` option: the server answers EROFS."""
    system = FakeSystem([
        MOUNTPOINT_OK,
        authorize_call(f"allow {FP} ro\n".encode()),
        CONNECT, SEND, ("channel.read_line", (64,), b"ok ro"),
        fuse_run("fsname=qvm://vault/home/user/share,subtype=qsf"),
        ("channel.detach", (), None),
    ])
    assert run(system, ARGS) == 0


def test_folder_is_normalised_and_escaped_in_fsname() -> None:
    folder = b"/home/user/My Files,2"
    data = b"vault\n" + base64.b64encode(folder) + b"\nrw\n"
    system = FakeSystem([
        MOUNTPOINT_OK,
        ("call", ([QREXEC, "dom0", "qsf.AuthorizeFolderAccess"], data, 65),
         Completed(0, f"allow {FP} rw\n".encode())),
        CONNECT, ("channel.send", (base64.b64encode(folder) + b"\n",), None),
        ("channel.read_line", (64,), b"ok rw"),
        fuse_run("fsname=qvm://vault/home/user/My%20Files%2C2,subtype=qsf"),
        ("channel.detach", (), None),
    ])
    assert run(system, ["vault", "//home/./user/My Files,2/", "/mnt/share"]) == 0


@pytest.mark.parametrize(
    ("reason", "text", "code"),
    [("user", "denied by the user", 3), ("block", "blocked", 3), ("policy", "never shares", 3),
     ("busy", "try later", 3), ("later", "denied (later)", 3), ("invalid", "malformed", 1),
     ("internal", "dom0 failed", 1), ("nogui", "no dialog could be shown", 3)],
)
def test_denied_in_dom0(reason: str, text: str, code: int,
                        capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem([MOUNTPOINT_OK, authorize_call(f"deny {reason}\n".encode())])
    assert run(system, ARGS) == code
    err = capsys.readouterr().err
    assert text in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("status", "code", "text"),
    [(126, 4, "qrexec policy refused"), (127, 1, "install qsf in dom0"), (125, 1, "exit 125")],
)
def test_authorize_qrexec_failures(status: int, code: int, text: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem([MOUNTPOINT_OK, authorize_call(b"", status=status)])
    assert run(system, ARGS) == code
    assert text in capsys.readouterr().err


@pytest.mark.parametrize(
    "reply", [b"allow\n", f"allow {FP.upper()} rw\n".encode(), f"allow {FP} rx\n".encode(),
              f"allow {FP} rw\nextra".encode(), b"deny \x1b[2J\n", b"ok\n"],
)
def test_unexpected_dom0_reply(reply: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem([MOUNTPOINT_OK, authorize_call(reply)])
    assert run(system, ARGS) == 1
    err = capsys.readouterr().err
    assert "unexpected answer from dom0" in err and "\x1b" not in err


@pytest.mark.parametrize(
    ("status", "code", "text"),
    [(126, 4, "qrexec policy refused qsf.ConnectToFolder"), (125, 7, "cannot reach"),
     (127, 7, "cannot reach"), (0, 7, "closed the connection"), (137, 7, "closed")],
)
def test_connect_without_reply(status: int, code: int, text: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem([
        MOUNTPOINT_OK, authorize_call(f"allow {FP} rw\n".encode()),
        CONNECT, SEND, ("channel.read_line", (64,), None),
        ("channel.wait", (), status), ("channel.abort", (), None),
    ])
    assert run(system, ARGS) == code
    assert text in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "code"),
    [(b"error denied", 3), (b"error missing", 5), (b"error notdir", 5), (b"error internal", 1),
     (b"ok", 1), (b"OK rw", 1), (b"\x00garbage", 1)],
)
def test_connect_error_lines(line: bytes, code: int) -> None:
    system = FakeSystem([
        MOUNTPOINT_OK, authorize_call(f"allow {FP} rw\n".encode()),
        CONNECT, SEND, ("channel.read_line", (64,), line), ("channel.abort", (), None),
    ])
    assert run(system, ARGS) == code


def test_connect_send_failure_is_unreachable() -> None:
    system = FakeSystem([
        MOUNTPOINT_OK, authorize_call(f"allow {FP} rw\n".encode()),
        CONNECT, ("channel.send", (B64,), BrokenPipeError(32, "Broken pipe")),
        ("channel.wait", (), 125), ("channel.abort", (), None),
    ])
    assert run(system, ARGS) == 7


@pytest.mark.parametrize("problem", ["does not exist", "is not a directory",
                                     "is already a mount point"])
def test_bad_mount_point_asks_nobody(problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem([("mount_point_problem", ("/mnt/share",), problem)])
    assert run(system, ARGS) == 6
    assert problem in capsys.readouterr().err


def test_fuse_backend_failure_aborts_the_channel() -> None:
    system = FakeSystem([
        MOUNTPOINT_OK, authorize_call(f"allow {FP} rw\n".encode()),
        CONNECT, SEND, ("channel.read_line", (64,), b"ok rw"),
        fuse_run("fsname=qvm://vault/home/user/share,subtype=qsf", status=1),
        ("channel.abort", (), None),
    ])
    assert run(system, ARGS) == 1


def test_foreground_waits_for_the_fuse_process() -> None:
    argv = [FUSE, "--rfd", str(RFD), "--wfd", str(WFD), "--foreground", "-o",
            "fsname=qvm://vault/home/user/share,subtype=qsf", "/mnt/share"]
    system = FakeSystem([
        MOUNTPOINT_OK, authorize_call(f"allow {FP} rw\n".encode()),
        CONNECT, SEND, ("channel.read_line", (64,), b"ok rw"),
        ("run", (argv, (RFD, WFD)), 0), ("channel.detach", (), None),
    ])
    assert run(system, ["--foreground", *ARGS]) == 0


def test_kernel_backend_missing_is_exit_8(capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem([MOUNTPOINT_OK])
    assert run(system, ["--backend=kernel", *ARGS]) == 8
    assert "no v9fs in this kernel" in capsys.readouterr().err


def test_fuse_backend_missing_is_exit_8() -> None:
    system = FakeSystem([MOUNTPOINT_OK], programs=("qrexec-client-vm",))
    assert run(system, ["--backend=fuse", *ARGS]) == 8


def test_no_qrexec_client_is_a_clear_failure(capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem([MOUNTPOINT_OK], programs=("qsf-fuse",))
    assert run(system, ARGS) == 1
    assert "qrexec-client-vm not found" in capsys.readouterr().err


def test_kernel_backend_gets_the_channel(capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[dict[str, Any]] = []

    def kernel_mount(**kwargs: Any) -> None:
        calls.append(kwargs)

    system = FakeSystem([
        MOUNTPOINT_OK, authorize_call(f"allow {FP} rw\n".encode()),
        CONNECT, SEND, ("channel.read_line", (64,), b"ok rw"), ("channel.detach", (), None),
    ], kernel=kernel_mount)
    assert run(system, ["--backend=auto", *ARGS]) == 0
    assert calls == [dict(rfd=RFD, wfd=WFD, mountpoint="/mnt/share",
                          source="qvm://vault/home/user/share", read_only=False, options="")]
    assert capsys.readouterr().err == "qvm-mount-folder: the kernel backend (auto)\n"


def test_kernel_mount_error_aborts() -> None:
    def kernel_mount(**kwargs: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    system = FakeSystem([
        MOUNTPOINT_OK, authorize_call(f"allow {FP} rw\n".encode()),
        CONNECT, SEND, ("channel.read_line", (64,), b"ok rw"), ("channel.abort", (), None),
    ], kernel=kernel_mount)
    assert run(system, ["--backend=kernel", *ARGS]) == 1


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["vault", "/x"],
        ["-vault", "/x", "/mnt"],
        ["dom 0", "/x", "/mnt"],
        ["v" * 32, "/x", "/mnt"],
        ["vault", "relative", "/mnt"],
        ["vault", "/a/../b", "/mnt"],
        ["-o", "fsname=evil", "vault", "/x", "/mnt"],
        ["-o", "subtype=x", "vault", "/x", "/mnt"],
        ["--backend=nfs", "vault", "/x", "/mnt"],
        ["--list", "vault", "/x", "/mnt"],
        ["--list", "--unmount", "/mnt"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(FakeSystem([]), args)
    assert exit_info.value.code == 2


MOUNT_TABLE = (
    "proc /proc proc rw 0 0\n"
    "qvm://vault/home/user/share /mnt/share fuse.qsf rw,nosuid,nodev 0 0\n"
    "qvm://vault/home/user/My%20Files /home/user/with\\040space fuse.qsf rw 0 0\n"
    "qvm://mail/srv /mnt/k 9p rw,trans=fd 0 0\n"
    "/dev/sda1 / ext4 rw 0 0\n"
)


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem([("read_mounts", (), MOUNT_TABLE)])
    assert run(system, ["--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "qvm://vault/home/user/share /mnt/share fuse.qsf",
        "qvm://vault/home/user/My%20Files /home/user/with space fuse.qsf",
        "qvm://mail/srv /mnt/k 9p",
    ]


def test_unmount_fuse_and_kernel() -> None:
    system = FakeSystem([("read_mounts", (), MOUNT_TABLE),
                         ("run", (["/usr/bin/fusermount3", "-u", "/mnt/share"], ()), 0)])
    assert run(system, ["--unmount", "/mnt/share"]) == 0
    system = FakeSystem([("read_mounts", (), MOUNT_TABLE),
                         ("kernel_unmount", ("/mnt/k",), None)])
    assert run(system, ["--unmount", "/mnt/k/"]) == 0


def test_kernel_unmount_failure_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem([("read_mounts", (), MOUNT_TABLE),
                         ("kernel_unmount", ("/mnt/k",), OSError(16, "target is busy"))])
    assert run(system, ["--unmount", "/mnt/k"]) == 1
    assert "target is busy" in capsys.readouterr().err


def test_unmount_refuses_what_is_not_a_share(capsys: pytest.CaptureFixture[str]) -> None:
    system = FakeSystem([("read_mounts", (), MOUNT_TABLE)])
    assert run(system, ["--unmount", "/"]) == 6
    assert "not a qsf share" in capsys.readouterr().err


def test_unmount_failure() -> None:
    system = FakeSystem([("read_mounts", (), MOUNT_TABLE),
                         ("run", (["/usr/bin/fusermount3", "-u", "/mnt/share"], ()), 1)])
    assert run(system, ["--unmount", "/mnt/share"]) == 1


def test_source_name_round_trip_through_proc_mounts_escaping() -> None:
    source = mounts.source_name("vault", b"/a b\tc\xff")
    assert source == "qvm://vault/a%20b%09c%FF"
    assert mounts.shares(f"{source} /m fuse.qsf rw 0 0\n")[0].source == source
