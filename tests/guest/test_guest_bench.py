"""`python -m bench.guest_bench --size tiny` run for real (Debian 13's kernel).

The benchmark boots its own guest, mounts each server with the guest's v9fs
client and runs every workload once (a workload that fails in the guest fails
the run). Checked: a sample per configuration and workload with times taken
and the servers' CPU read, the table printed with a qsf/diod ratio, and no
QEMU or server process left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import support
from guest_kernels import KERNELS, GuestKernelError, prepare

pytestmark = [pytest.mark.guest, pytest.mark.diod]

CONFIGS = {"qsf @ 64 KiB", "diod @ 64 KiB", "qsf @ 1 MiB"}
WORKLOADS = {"write+fsync", "cold read", "create", "ls -l", "untar+sync", "rm -rf"}


def group_members(pgid: int) -> list[int]:
    """Processes in process group pgid (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                found.append(int(entry))
    return found


def test_guest_bench_tiny_measures_every_config_and_workload(tmp_path: Path) -> None:
    for program in ("qemu-system-x86_64", "diod", "sudo"):
        support.need_program(program)
    spec = next(k for k in KERNELS if k.label == "6.12")
    try:
        prepare(spec)
    except (GuestKernelError, OSError) as error:
        support.missing(f"guest kernel {spec.label}: {error}")
    results = tmp_path / "bench.json"
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench.guest_bench", "--size", "tiny", "--kernel", "6.12",
         "--json", str(results)],
        cwd=support.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        out, err = bench.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGKILL)
        bench.communicate()
        pytest.fail("the tiny benchmark took more than 240 s")
    assert bench.returncode == 0, f"stdout: {out}\nstderr: {err}"
    assert group_members(bench.pid) == []  # QEMU and the servers are gone
    data = json.loads(results.read_text())
    samples = data["samples"]
    assert {(s["config"], s["workload"]) for s in samples} == {
        (config, workload) for config in CONFIGS for workload in WORKLOADS}
    assert all(s["seconds"] > 0 and s["amount"] > 0 and s["server_cpu_percent"] >= 0
               for s in samples)
    assert "6.12" in out.splitlines()[0]
    rows = [line.split() for line in out.splitlines() if line.startswith("create ")]
    assert len(rows) == 3, out
    # qsf's rows carry a ratio against diod: a number, not "-".
    for row in rows:
        if row[1] == "qsf":
            float(row[row.index("files/s") + 1])
