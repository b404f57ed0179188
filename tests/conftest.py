"""Shared fixtures: one tiny model directory per test session (tests/support.py builds it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny TNN (d_model 32, 2 layers, ETSC-converted) with a byte-level BPE and a chat template."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))
