"""Hypothesis settings shared by the fuzz tests: CI runs a bounded, derandomized set (the same cases every run);
`make fuzz` sets TNN_FUZZ_EXAMPLES and gets that many new random cases per test."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def fuzz_settings(ci_examples: int) -> settings:
    examples = int(os.environ.get("TNN_FUZZ_EXAMPLES", str(ci_examples)))
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                    derandomize="TNN_FUZZ_EXAMPLES" not in os.environ)  # fmt: skip
