"""Shared fixtures for model tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.golden import golden_dir

# Tiny models run fastest on one thread; more threads only spin against each other on a shared CPU.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def golden() -> Path:
    return golden_dir()
