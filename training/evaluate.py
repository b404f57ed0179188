"""Scoring a text: cross-entropy, perplexity and bits per byte, in non-overlapping blocks of a fixed context.

The text is encoded once with an end-of-text token in front, so every token of the text is predicted:
block i feeds tokens[i*C : (i+1)*C] and scores tokens[i*C + 1 : (i+1)*C + 1], each block from a fresh
context (no state or tokens carried between blocks). Bits per byte = total nats / ln 2 / UTF-8 bytes of the
text, which is comparable across tokenizers and models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LogitsFn = Callable[[Tensor], Tensor]  # tokens (B, L) -> logits (B, L, V)


@dataclass(frozen=True)
class Score:
    """What one pass over a text measured."""

    context: int
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the text
    loss: float  # mean cross-entropy, nats per token
    perplexity: float
    bits_per_byte: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@torch.no_grad()
def score_tokens(logits_fn: LogitsFn, ids: Tensor, n_bytes: int, *, context: int, max_batch: int = 16) -> Score:
    """Score `ids` (T+1,) = [eos, text tokens...] in blocks of `context` inputs, `max_batch` blocks at a time."""
    if ids.ndim != 1 or ids.numel() < 2:
        raise ValueError(f"need a 1-d tensor of at least 2 token ids, got shape {tuple(ids.shape)}")
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    n_targets = ids.numel() - 1
    n_full = n_targets // context
    total_nats = 0.0
    batches: list[tuple[Tensor, Tensor]] = []
    if n_full:
        starts = torch.arange(n_full) * context  # (n_full,)
        window = starts[:, None] + torch.arange(context + 1)[None, :]  # (n_full, C+1)
        blocks = ids[window]  # (n_full, C+1)
        for first in range(0, n_full, max_batch):
            chunk = blocks[first : first + max_batch]
            batches.append((chunk[:, :-1], chunk[:, 1:]))
    if n_targets % context:
        tail = ids[n_full * context :][None]  # (1, rest+1)
        batches.append((tail[:, :-1], tail[:, 1:]))
    for inputs, targets in batches:
        logits = logits_fn(inputs).float()  # (b, l, V)
        total_nats += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
    loss = total_nats / n_targets
    return Score(
        context=context,
        tokens=n_targets,
        bytes=n_bytes,
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        bits_per_byte=total_nats / math.log(2) / n_bytes,
    )
