"""Helpers for the decoding and conversion tests (the tiny models themselves come from tests.model.helpers)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.golden import golden_dir


def golden_lm() -> Path:
    """The golden fairseq LM case folder, for tests outside tests/model (no `golden` fixture there)."""
    return golden_dir("lm_decay99_pre_tiny")


def random_tokens(batch: int, length: int, vocab: int = 97, seed: int = 0) -> torch.Tensor:
    """(batch, length) uniform token ids from a seeded generator."""
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
