"""The prefix cache's fill policy: where a prompt starts from (its longest cached prefix) and stops to store
states, and which continuation a finished chat turn fills so that the next turn finds it."""

from __future__ import annotations

import torch

from tnn.server.engine_records import PrefillUnit
from tnn.server.generation import GenerationRequest
from tnn.server.prefix_cache import PrefixCache, cache_boundaries


def restore(cache: PrefixCache, unit: PrefillUnit, device: torch.device, interval: int, *, lookup: bool) -> None:
    """Start `unit` from the longest cached prefix of its prompt (`lookup`; a private copy of the state on
    `device`) and plan where its prefill stops to store states (every `interval` tokens, the request's extra
    boundaries, the prompt's end)."""
    if lookup:
        with cache.lookup(unit.prompt, count=unit.tracker is not None) as hit:
            if hit is not None:
                unit.position = hit.length
                unit.state = cache.copy_out(hit, device)
    extra = unit.tracker.request.cache_boundaries if unit.tracker is not None else ()
    unit.stops = cache_boundaries(unit.position, len(unit.prompt), interval, extra)


def continuation_to_fill(
    cache: PrefixCache, request: GenerationRequest, prompt: list[int], text: str
) -> list[int] | None:
    """The tokens where a chat's next turn continues after the answer `text` to `prompt` (their state is worth
    prefilling now), or None: not a chat, nothing beyond the prompt, or cached already."""
    if request.continuation is None:
        return None
    target = request.continuation(text)  # (chat template + tokenizer: about a millisecond)
    if len(target) <= len(prompt) or cache.contains(target):
        return None
    return target
