"""Helpers for the decoding and conversion tests (the tiny models themselves come from tests.model.helpers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.model.conftest import GOLDEN

GOLDEN_LM = GOLDEN / "lm_decay99_pre_tiny"


def golden_lm() -> Path:
    """The golden fairseq LM case folder, for tests outside tests/model (no `golden` fixture there)."""
    if not GOLDEN_LM.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"golden data missing at {GOLDEN_LM}")
        pytest.skip(f"golden data not found at {GOLDEN_LM} (it sits in ../shared beside the checkout)")
    return GOLDEN_LM


def random_tokens(batch: int, length: int, vocab: int = 97, seed: int = 0) -> torch.Tensor:
    """(batch, length) uniform token ids from a seeded generator."""
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
