"""Next-token sampling for a batch of sequences, each with its own parameters and seeded generator.

Order per row: repetition penalty (prompt and output tokens), presence/frequency penalties (output tokens),
temperature, top-k, top-p; then an exponential race (argmax p / E, E ~ Exp(1) from the row's generator), which
is a draw from the filtered distribution. Temperature 0 is greedy. Everything runs in float32; a row whose logits
are not finite is reported, never sampled (the caller fails that request alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

GREEDY_BELOW = 1e-5  # temperatures below this are treated as greedy (division would overflow)


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings (OpenAI names; top_k and repetition_penalty as in vLLM/HF)."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages tokens already in prompt or output
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            ("temperature", 0.0 <= self.temperature <= 2.0, "in [0, 2]"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]"),
            ("repetition_penalty", 0.0 < self.repetition_penalty <= 2.0, "in (0, 2]"),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "in [-2, 2]"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "in [-2, 2]"),
        ]
        for name, ok, allowed in checks:
            if not ok:  # NaN fails every comparison, so it lands here too
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """A generator seeded for this request, or None (the global RNG) without a seed."""
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


@dataclass(frozen=True)
class SampleResult:
    tokens: Tensor  # (B,) int64
    finite: Tensor  # (B,) bool: False where the logits had NaN/inf (token is meaningless there)


def _column(values: list[float], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)[:, None]  # (B, 1)


def apply_penalties(
    logits: Tensor,
    params: Sequence[SamplingParams],
    output_counts: Tensor | None,
    prompt_mask: Tensor | None,
) -> Tensor:
    """logits (B, V) float32; output_counts (B, V) counts of generated tokens; prompt_mask (B, V) bool."""
    if output_counts is None and prompt_mask is None:
        return logits
    seen = torch.zeros_like(logits, dtype=torch.bool)
    if prompt_mask is not None:
        seen |= prompt_mask
    if output_counts is not None:
        seen |= output_counts > 0
    repetition = _column([p.repetition_penalty for p in params], logits)
    penalised = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(seen, penalised, logits)
    if output_counts is not None:
        counts = output_counts.to(logits.dtype)
        presence = _column([p.presence_penalty for p in params], logits)
        frequency = _column([p.frequency_penalty for p in params], logits)
        logits = logits - presence * (counts > 0).to(logits.dtype) - frequency * counts
    return logits


def sample(
    logits: Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    *,
    output_counts: Tensor | None = None,
    prompt_mask: Tensor | None = None,
) -> SampleResult:
    """Draw one token per row. logits: (B, V) any float dtype; params and generators: one per row."""
    batch = logits.shape[0]
    if len(params) != batch or len(generators) != batch:
        raise ValueError(
            f"need one SamplingParams and generator per row: {batch} rows, "
            f"{len(params)} params, {len(generators)} generators"
        )
    logits = logits.float()
    finite = torch.isfinite(logits).all(dim=-1)  # (B,)
    logits = torch.where(finite[:, None], logits, torch.zeros_like(logits))
    logits = apply_penalties(logits, params, output_counts, prompt_mask)
    greedy = torch.tensor([p.greedy for p in params], device=logits.device)
    if bool(greedy.all()):
        return SampleResult(tokens=logits.argmax(dim=-1), finite=finite)

    temperature = _column([1.0 if p.greedy else p.temperature for p in params], logits)
    sorted_logits, order = (logits / temperature).sort(dim=-1, descending=True)  # (B, V) each
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]  # (1, V)
    top_k = torch.tensor([p.top_k or logits.shape[-1] for p in params], device=logits.device)[:, None]
    keep = ranks < top_k  # (B, V)
    probs = torch.softmax(sorted_logits.masked_fill(~keep, float("-inf")), dim=-1)
    top_p = _column([p.top_p for p in params], logits)
    keep &= (probs.cumsum(dim=-1) - probs) < top_p  # the most likely token always survives
    probs = torch.softmax(sorted_logits.masked_fill(~keep, float("-inf")), dim=-1)  # (B, V)

    race = torch.empty_like(probs)
    for row, generator in enumerate(generators):
        race[row].exponential_(generator=generator)
    choice = (probs / race).argmax(dim=-1)  # (B,) position in sorted order
    sampled = order.gather(1, choice[:, None])[:, 0]
    tokens = torch.where(greedy, logits.argmax(dim=-1), sampled)
    return SampleResult(tokens=tokens, finite=finite)
