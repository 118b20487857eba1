"""The decoder fuzz target (fuzz/p9_decoder.py): a short fixed-seed run, and long ones (slow)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import ModuleType

import pytest
import support
from hypothesis import given
from hypothesis import strategies as st

TARGET = support.REPO / "fuzz" / "p9_decoder.py"


def _load_target() -> ModuleType:
    spec = importlib.util.spec_from_file_location("p9_decoder_fuzz", TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


target = _load_target()


def test_short_fixed_seed_run() -> None:
    inputs, decoded = target.random_run(20_000, seed=2026)
    assert inputs == 20_000
    assert decoded > 5_000  # the mutations leave enough frames intact to reach the decoders


@given(st.binary(max_size=2000))
def test_libfuzzer_entry_on_arbitrary_bytes(data: bytes) -> None:
    target.one_input(data)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_long_random_run() -> None:
    """About 2-3 minutes: pytest -m slow tests/p9."""
    target.random_run(1_500_000, seed=7)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_atheris_run() -> None:
    """Coverage-guided, 5 minutes, when atheris is installed."""
    if importlib.util.find_spec("atheris") is None:
        support.missing("python package atheris")
    result = subprocess.run(
        [sys.executable, str(TARGET), "-max_total_time=300", "-seed=1", "-rss_limit_mb=2048"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
