"""Shared test set-up: hypothesis profiles and the path to shared helpers."""

import os

from hypothesis import HealthCheck, settings

# CI runs a fixed-seed, bounded profile; `make test-long` selects "long".
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("long", max_examples=20_000, deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") == "true" else "dev")
)
