"""Shared fixtures for model tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.golden import golden_dir


@pytest.fixture(scope="session")
def golden() -> Path:
    return golden_dir()
