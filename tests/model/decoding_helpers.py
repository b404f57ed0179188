"""Tiny seeded models and the golden folder for the decoding and conversion tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tnn.model import TnnConfig, TnnLM

# ../shared/golden beside the checkout, read in place (never copied)
GOLDEN = Path(__file__).resolve().parents[3] / "shared" / "golden"
GOLDEN_LM = GOLDEN / "lm_decay99_pre_tiny"


def golden_lm() -> Path:
    """The golden fairseq LM case folder; skipped where ../shared is absent, a failure in CI."""
    if not GOLDEN_LM.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"golden data missing at {GOLDEN_LM}")
        pytest.skip(f"golden data not found at {GOLDEN_LM} (it sits in ../shared beside the checkout)")
    return GOLDEN_LM


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides: Any) -> TnnLM:
    """d_model=32, 2 layers, vocab 97, trained length 64; every trainable parameter perturbed by seeded noise."""
    config: dict[str, Any] = dict(
        vocab_size=97, d_model=32, n_layers=2, d_glu=48, d_rpe=16, n_rpe_layers=2, dropout=0.0, train_length=64
    )
    torch.manual_seed(seed)
    model = TnnLM(TnnConfig(**{**config, **overrides}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model.to(dtype).eval()


def random_tokens(batch: int, length: int, vocab: int = 97, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected|, the golden cases' metric."""
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
