"""The server benchmark runs at tiny size and measures both servers, so that it cannot rot."""

from __future__ import annotations

import json
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
    done = subprocess.run(
        [sys.executable, "-m", "bench.server", "--size", "tiny", "--json", str(out)],
        cwd=support.REPO, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
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
        assert config in done.stdout
