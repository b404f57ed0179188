"""Logprobs the engine reports: of each sampled token (with the k most likely) and of each prompt token (echo)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from tnn.server.engine_records import PrefillUnit
from tnn.server.generation import TokenLogprob

PROMPT_LOGPROBS_CHUNK = 512  # echo + logprobs materialises (chunk, V) logits: keep that bounded


def sampled_logprobs(requested: list[int | None], logits: Tensor, tokens: Sequence[int]) -> list[TokenLogprob | None]:
    """Per row, None where `requested` is None, else the sampled token's logprob under the model's distribution
    and the `requested` most likely tokens. logits (B, V), tokens: B host ids."""
    logprobs: list[TokenLogprob | None] = [None] * len(requested)
    rows = [i for i, wanted in enumerate(requested) if wanted is not None]
    if rows:
        k = max(requested[i] or 0 for i in rows)
        lp = torch.log_softmax(logits[rows].float(), dim=-1)  # (R, V): the model's distribution
        entries = logprob_entries(lp, torch.tensor([tokens[i] for i in rows]), k)
        for i, entry in zip(rows, entries, strict=True):
            logprobs[i] = dataclasses.replace(entry, top=entry.top[: requested[i] or 0])
    return logprobs


def record_prompt_logprobs(unit: PrefillUnit, tokens: Tensor, logits: Tensor) -> None:
    """Logprob of each prompt token given the tokens before it. tokens (C,), logits (C, V)."""
    assert unit.prompt_logprobs is not None
    k = unit.tracker.request.prompt_logprobs or 0
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (C, V)
    previous = logprobs[:-1] if unit.carry_logprobs is None else torch.cat([unit.carry_logprobs[None], logprobs[:-1]])
    targets = tokens if unit.carry_logprobs is not None else tokens[1:]
    if unit.carry_logprobs is None:
        unit.prompt_logprobs.append(None)  # the first token has no context
    entries = logprob_entries(previous, targets, k)
    unit.prompt_logprobs.extend(entries)
    unit.carry_logprobs = logprobs[-1]


def logprob_entries(logprobs: Tensor, targets: Tensor, k: int) -> list[TokenLogprob]:
    """logprobs (R, V), targets (R,) -> per row the target's logprob and the k most likely tokens."""
    chosen = logprobs.gather(1, targets[:, None].to(logprobs.device))[:, 0].tolist()  # (R,)
    if k > 0:
        top_values, top_ids = logprobs.topk(k, dim=-1)  # (R, k) each
        tops = [
            list(zip(ids, values, strict=True))
            for ids, values in zip(top_ids.tolist(), top_values.tolist(), strict=True)
        ]
    else:
        tops = [[] for _ in chosen]
    return [
        TokenLogprob(token=int(t), logprob=float(lp), top=top)
        for t, lp, top in zip(targets.tolist(), chosen, tops, strict=True)
    ]
