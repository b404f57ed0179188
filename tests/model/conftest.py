"""Shared fixtures for model tests: tiny seeded configs and the golden cases read in place from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[3] / "shared" / "golden"


@pytest.fixture(scope="session")
def golden() -> Path:
    """../shared/golden beside the checkout. CI always has it, so there a missing folder is a failure."""
    if not GOLDEN.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"golden data missing at {GOLDEN}")
        pytest.skip(f"golden data not found at {GOLDEN} (it sits in ../shared beside the checkout)")
    return GOLDEN
