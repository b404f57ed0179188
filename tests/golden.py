"""Where the golden data of the original implementation lives: ../shared/golden beside the checkout, read in place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# TNN_GOLDEN_DIR overrides the location (a worktree that does not sit beside ../shared)
GOLDEN = Path(os.environ.get("TNN_GOLDEN_DIR") or Path(__file__).resolve().parents[2] / "shared" / "golden")


def golden_dir(case: str = "") -> Path:
    """The golden folder (or one case in it). CI always has it, so there a missing folder fails the test;
    elsewhere (a fresh clone without ../shared) the test is skipped with the reason."""
    path = GOLDEN / case
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"golden data missing at {path}")
        pytest.skip(f"golden data not found at {path} (it sits in ../shared beside the checkout)")
    return path
