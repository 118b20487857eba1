"""qsf.ConnectToFolder (qsf_server/connect.py) run as qrexec runs it, with dom0 faked.

A fake `qrexec-client-vm` first on PATH records how it was called and answers
as dom0's qsf.QueryFolderAuthorization would.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import support

FP = "0123456789abcdef0123456789abcdef"

FAKE_QREXEC = """#!{python}
import json, os, sys
data = sys.stdin.buffer.read()
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "stdin": data.decode("latin-1")}}) + "\\n")
sys.stdout.buffer.write(os.environ["FAKE_REPLY"].encode())
sys.exit(int(os.environ.get("FAKE_STATUS", "0")))
"""


@pytest.fixture
def fake_dom0(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "qrexec-client-vm"
    program.write_text(FAKE_QREXEC.format(python=sys.executable))
    program.chmod(0o755)
    return tmp_path


def connect(fake: Path, stdin: bytes, reply: str = "ok rw\n", status: int = 0,
            fp: str = FP, client: str = "work") -> tuple[bytes, list[dict[str, object]], int]:
    env = {
        "PATH": f"{fake / 'bin'}:{support.VENV_BIN}:/usr/bin:/bin",
        "QREXEC_REMOTE_DOMAIN": client,
        "QREXEC_SERVICE_ARGUMENT": fp,
        "FAKE_LOG": str(fake / "log"),
        "FAKE_REPLY": reply,
        "FAKE_STATUS": str(status),
        "PYTHONPATH": str(support.REPO),
    }
    result = subprocess.run([support.REPO / "qubes-rpc" / "qsf.ConnectToFolder", fp],
                            input=stdin, env=env, capture_output=True, timeout=60, check=False)
    log_path = fake / "log"
    log = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() \
        else []
    return result.stdout, log, result.returncode


def line(path: bytes) -> bytes:
    return base64.b64encode(path) + b"\n"


def test_asks_dom0_with_fingerprint_client_and_folder(fake_dom0: Path) -> None:
    folder = fake_dom0 / "missing-folder"
    out, log, status = connect(fake_dom0, line(bytes(folder)))
    assert log == [{
        "argv": ["dom0", f"qsf.QueryFolderAuthorization+{FP}"],
        "stdin": "work\n" + line(bytes(folder)).decode(),
    }]
    assert (out, status) == (b"error missing\n", 0)  # checked only after dom0 said yes


def test_not_a_directory(fake_dom0: Path) -> None:
    (fake_dom0 / "file").write_text("x")
    out, _, status = connect(fake_dom0, line(bytes(fake_dom0 / "file")))
    assert (out, status) == (b"error notdir\n", 0)


@pytest.mark.parametrize(("reply", "status"), [("deny unknown\n", 0), ("deny expired\n", 0)])
def test_dom0_deny_reveals_nothing(fake_dom0: Path, reply: str, status: int) -> None:
    out, _, code = connect(fake_dom0, line(b"/nonexistent"), reply=reply, status=status)
    assert (out, code) == (b"error denied\n", 0)


@pytest.mark.parametrize(
    ("reply", "status"),
    [("ok rw\n", 126), ("", 125), ("ok rwx\n", 0), ("ok rw\nmore", 0), ("x" * 1000, 0)],
)
def test_dom0_failure_is_internal(fake_dom0: Path, reply: str, status: int) -> None:
    out, _, code = connect(fake_dom0, line(b"/tmp"), reply=reply, status=status)
    assert (out, code) == (b"error internal\n", 0)


@pytest.mark.parametrize(
    ("stdin", "fp", "client"),
    [
        (b"", FP, "work"),
        (b"L3RtcA==", FP, "work"),  # no newline
        (b"L3RtcA\n", FP, "work"),  # bad padding
        (b"!!!!\n", FP, "work"),
        (line(b"tmp"), FP, "work"),
        (line(b"/tmp/../etc"), FP, "work"),
        (line(b"/tmp/"), FP, "work"),
        (line(b"/tm\0p"), FP, "work"),
        (b"A" * 6000 + b"\n", FP, "work"),
        (line(b"/tmp"), FP.upper(), "work"),
        (line(b"/tmp"), "-o" + FP[2:], "work"),
        (line(b"/tmp"), "", "work"),
    ],
)
def test_malformed_input_never_reaches_dom0(fake_dom0: Path, stdin: bytes, fp: str,
                                            client: str) -> None:
    out, log, code = connect(fake_dom0, stdin, fp=fp, client=client)
    assert (out, code) == (b"error denied\n", 0)
    assert log == []


def test_ok_then_serves_9p_on_the_same_channel(fake_dom0: Path) -> None:
    share = fake_dom0 / "share"
    share.mkdir()
    tversion = struct.pack("<IBHIH", 4 + 1 + 2 + 4 + 2 + 8, 100, 0xFFFF, 8192, 8) + b"9P2000.L"
    out, _, code = connect(fake_dom0, line(bytes(share)) + tversion, reply="ok ro\n")
    assert code == 0
    assert out.startswith(b"ok ro\n")
    size, kind = struct.unpack_from("<IB", out, 6)
    assert kind == 101 and size == len(out) - 6  # Rversion, then EOF ended the server
    assert out.endswith(b"9P2000.L")


def test_read_only_grant_runs_the_server_read_only(fake_dom0: Path) -> None:
    from qsf_server.connect import server_argv

    assert server_argv(b"/srv/x", "ro", "work")[-6:] == [
        b"qsf_server", b"--read-only", b"--client", b"work", b"--", b"/srv/x"]
    assert server_argv(b"/srv/x", "rw", "work")[-5:] == [
        b"qsf_server", b"--client", b"work", b"--", b"/srv/x"]


def test_no_qrexec_client_is_internal(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "QREXEC_REMOTE_DOMAIN": "work",
           "QREXEC_SERVICE_ARGUMENT": FP, "PYTHONPATH": str(support.REPO)}
    result = subprocess.run([sys.executable, "-m", "qsf_server.connect"], input=line(b"/tmp"),
                            env=env, capture_output=True, timeout=60, check=False)
    assert (result.stdout, result.returncode) == (b"error internal\n", 0)
    assert os.path.exists("/tmp")
