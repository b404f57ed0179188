"""The engine's bookkeeping of the requests in flight: a request's tracker, the sequences of its choices (sampler,
generated tokens, text) and the prompts being prefilled. Owned by the engine thread."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tnn.model.tnn import TnnState
from tnn.server.generation import RequestHandle, TokenLogprob
from tnn.server.textstream import TextStream

if TYPE_CHECKING:
    from tnn.server.engine import Engine

SEED_MODULUS = 2**64


class Tracker:
    """Engine-side bookkeeping of one request."""

    def __init__(self, handle: RequestHandle) -> None:
        self.handle = handle
        self.request = handle.request
        self.sequences: list[ChoiceSequence] = []
        self.open = self.request.n_sequences  # choices not yet finished
        self.admitted: float | None = None
        self.first_token: float | None = None
        self.closed = False


class ChoiceSequence:
    """One choice: its sampler, generated tokens and text. Compared by identity."""

    def __init__(self, tracker: Tracker, index: int, engine: Engine, prompt: list[int]) -> None:
        request = tracker.request
        self.tracker = tracker
        self.index = index
        seed = request.sampling.seed
        self.params = request.sampling if seed is None else dataclasses.replace(
            request.sampling, seed=(seed + index) % SEED_MODULUS
        )  # fmt: skip
        self.generator = self.params.generator(engine.device)
        self.stream = TextStream(engine.tokenizer.detokenizer(), request.stop)
        vocab = engine.vocab_size
        p = self.params
        needs_counts = p.presence_penalty != 0 or p.frequency_penalty != 0 or p.repetition_penalty != 1
        self.counts = torch.zeros(vocab, dtype=torch.int32, device=engine.device) if needs_counts else None
        self.prompt_mask: Tensor | None = None
        if p.repetition_penalty != 1:
            self.prompt_mask = torch.zeros(vocab, dtype=torch.bool, device=engine.device)
            self.prompt_mask[torch.tensor(prompt, device=engine.device)] = True
        self.matcher = None if request.grammar is None else engine.grammar_matcher(request.grammar)
        self.tokens: list[int] = []
        self.last_time = 0.0
        self.pending_tokens: list[int] = []
        self.pending_logprobs: list[TokenLogprob] = []
        self.finished = False


class PrefillUnit:
    """One prompt being prefilled (possibly over several iterations) for its n sequences; without a tracker, a
    cache fill (tokens prefilled only to store their state)."""

    def __init__(
        self, tracker: Tracker | None, prompt_index: int, prompt: list[int], sequences: list[ChoiceSequence]
    ) -> None:
        self.tracker = tracker
        self.prompt_index = prompt_index
        self.prompt = prompt
        self.tokens = torch.tensor([prompt], dtype=torch.long)  # (1, L), moved to the device per chunk
        self.position = 0
        self.state: TnnState | None = None
        self.sequences = sequences
        self.prompt_logprobs: list[TokenLogprob | None] | None = (
            [] if tracker is not None and tracker.request.prompt_logprobs is not None else None
        )
        self.carry_logprobs: Tensor | None = None  # (V,) log-probs after the last prefilled token
        self.stops: list[int] = []  # positions where the prefix cache stores the state (ascending)

    @property
    def remaining(self) -> int:
        return self.tokens.shape[1] - self.position

    @property
    def until_stop(self) -> int:
        """Tokens to prefill before the next cache boundary (or the end)."""
        return next((p for p in self.stops if p > self.position), self.tokens.shape[1]) - self.position

    @property
    def closed(self) -> bool:
        return self.tracker is not None and self.tracker.closed
