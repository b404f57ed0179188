"""Tiny seeded models for tests (d_model=32, 2 layers, vocab 97)."""

from __future__ import annotations

from typing import Any

import torch

from tnn.model import TnnConfig, TnnLM


def tiny_config(**overrides: Any) -> TnnConfig:
    base: dict[str, Any] = dict(
        vocab_size=97, d_model=32, n_layers=2, d_glu=48, d_rpe=16, n_rpe_layers=2, dropout=0.0, train_length=64
    )
    return TnnConfig(**{**base, **overrides})


def perturb_(model: TnnLM, seed: int = 0, scale: float = 0.05) -> TnnLM:
    """Add seeded noise to every trainable parameter so no tensor keeps its default init (zero biases etc.)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides: Any) -> TnnLM:
    torch.manual_seed(seed)
    model = TnnLM(tiny_config(**overrides))
    return perturb_(model, seed).to(dtype).eval()


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected|, the golden cases' metric."""
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
