"""The FUSE and codec benchmarks run at tiny size and measure every row, so that they cannot rot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import support

WORKLOADS = ("seq write", "4k writes", "seq read (cold)", "create files", "rm files",
             "ls -l (cold)", "ls -l (warm)", "untar tree", "find + stat (cold)", "rm -rf tree",
             "4k random read", "coherence", "client CPU", "server CPU")
# Rows that are 0 for the local directory (no mount, no processes).
LOCAL_ZERO = ("coherence", "client CPU", "server CPU")


def run_bench(argv: list[str], timeout: float) -> str:
    # Its own process group, so that a hung run is stopped with what it started.
    bench = subprocess.Popen([sys.executable, "-m", *argv], cwd=support.REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        stdout, stderr = bench.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGKILL)
        stdout, stderr = bench.communicate()
        pytest.fail(f"{argv} hung\nstdout:\n{stdout}\nstderr:\n{stderr}")
    assert bench.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    return stdout


@pytest.mark.fuse
def test_tiny_fuse_benchmark_measures_qsf_writeback_plain_sshfs_and_local(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the FUSE benchmark drops the page cache: it needs root")
    support.need_fuse()
    for program in ("sshfs", "fio", "socat", "tar"):
        support.need_program(program)
    if not Path("/usr/lib/openssh/sftp-server").exists():
        support.missing("/usr/lib/openssh/sftp-server (openssh-sftp-server)")
    out = tmp_path / "fuse.json"
    stdout = run_bench(["bench.fuse_bench", "--size", "tiny", "--json", str(out)], 420)
    report = json.loads(out.read_text())
    assert set(report) == {"qsf", "qsf-writeback", "qsf-plain", "sshfs", "local"}
    for setup, rows in report.items():
        assert set(rows) == set(WORKLOADS), setup
        for workload, samples in rows.items():
            if setup == "local" and workload in LOCAL_ZERO:
                assert samples == [0.0], (setup, workload)
                continue
            assert samples and all(value > 0 for value in samples), (setup, workload)
    # With change notification a change shows well within the cap (sshfs: its caches).
    assert report["qsf"]["coherence"][0] < 1.0
    for workload in WORKLOADS:
        assert f"| {workload} |" in stdout


def test_codec_micro_benchmark_reports_every_message() -> None:
    stdout = run_bench(["bench.codec_micro", "--repeat", "20"], 120)
    for row in ("Tread", "Twrite 4 KiB", "Twalk 3 names", "Rgetattr", "Rreaddir 50 entries"):
        line = next(line for line in stdout.splitlines() if line.startswith(row))
        figures = [float(word) for word in line[len(row):].split()]
        assert len(figures) == 5 and all(figure > 0 for figure in figures), line


@pytest.mark.fuse
def test_tiny_cpu_per_operation_reports_every_operation() -> None:
    if os.geteuid() != 0:
        pytest.skip("the CPU benchmark drops the page cache: it needs root")
    support.need_fuse()
    stdout = run_bench(["bench.fuse_cpu", "--files", "50"], 300)
    for operation in ("ls -l (cold)", "ls -l (warm)", "stat (cold)", "create", "unlink"):
        line = next(line for line in stdout.splitlines() if line.startswith(f"| {operation} |"))
        figures = [float(cell) for cell in line.strip("|").split("|")[1:]]
        assert len(figures) == 4 and all(figure >= 0 for figure in figures), line
