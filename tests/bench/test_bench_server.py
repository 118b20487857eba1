"""The server benchmark runs at tiny size and measures both servers, so that it cannot rot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import support

pytestmark = pytest.mark.diod


def test_tiny_benchmark_measures_qsf_and_diod(tmp_path: Path) -> None:
    support.need_program("diod")
    support.venv_program("qsf-server")
    out = tmp_path / "bench.json"
    # Its own process group, so that a hung run is stopped with the servers it started.
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench.server", "--size", "tiny", "--json", str(out)],
        cwd=support.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = bench.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGKILL)  # not reaped yet: the group is still ours
        stdout, stderr = bench.communicate()
        pytest.fail(f"the tiny benchmark hung\nstdout:\n{stdout}\nstderr:\n{stderr}")
    assert bench.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    report = json.loads(out.read_text())
    measured = {(s["config"], s["workload"]): s for s in report["medians"]}
    expected = {(config, workload)
                for config in ("qsf @ 64 KiB", "diod @ 64 KiB")
                for workload in ("small ops", "seq read", "seq write")}
    expected |= {("qsf @ 1 MiB", "seq read"), ("qsf @ 1 MiB", "seq write")}
    assert set(measured) == expected
    for sample in measured.values():
        assert sample["rate"] > 0
        assert sample["client_cpu_percent"] >= 0
        assert sample["server_cpu_percent"] >= 0
    # The printed table shows every configuration with its ratio to diod.
    for config, _ in expected:
        assert config in stdout


def test_qfsd_joins_when_its_binary_is_given(tmp_path: Path) -> None:
    """Upstream's qfsd is not packaged here: a stand-in with its command line
    (`qfsd READFD WRITEFD EXPORT`) that runs diod checks the plumbing."""
    diod = support.need_program("diod")
    stand_in = tmp_path / "qfsd"
    stand_in.write_text(f'#!/bin/sh\nexec {diod} -f -n -c /dev/null -L stderr -e "$3" '
                        '--rfdno "$1" --wfdno "$2"\n')
    stand_in.chmod(0o755)
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.server", "--size", "tiny", "--workloads", "small ops",
         "--json", str(out)],
        cwd=support.REPO, capture_output=True, text=True, timeout=240,
        env={**os.environ, "QFSD": str(stand_in)},
    )
    assert result.returncode == 0, result.stderr
    configs = {s["config"] for s in json.loads(out.read_text())["medians"]}
    assert configs == {"qsf @ 64 KiB", "diod @ 64 KiB", "qfsd @ 64 KiB"}
    assert "qfsd @ 64 KiB" in result.stdout


def test_qfsd_without_a_binary_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.server", "--servers", "qsf,qfsd", "--qfsd", "/nonexistent"],
        cwd=support.REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "qfsd: /nonexistent is not an executable" in result.stderr
