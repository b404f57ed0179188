"""The decode loop for library users: prefill the prompt once, then one recurrent `step` per new token.

No HTTP, no files, one sequence at a time (the server's engine does batching). The model must be converted
(`tnn convert`, or `tnn.model.attach_ssm`).

    ids = generate(model, prompt_ids, max_new_tokens=32, sampling=SamplingParams(temperature=0.8, seed=0))
    for token in stream(model, prompt_ids, max_new_tokens=32): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from tnn.model.sampling import SamplingParams, sample
from tnn.model.tnn import TnnLM


def stream(
    model: TnnLM,
    prompt: Sequence[int] | Tensor,
    *,
    max_new_tokens: int,
    sampling: SamplingParams | None = None,
    eos_token_id: int | None = None,
    chunk_size: int = 2048,
) -> Iterator[int]:
    """Yield generated token ids one at a time (the eos token, if produced, is yielded last).

    prompt: token ids (L,) with L >= 1, checked here (before the first token is requested). The iterator
    raises FloatingPointError if the model produces non-finite logits.
    """
    tokens = torch.as_tensor(prompt, dtype=torch.long, device=model.device)  # (L,)
    if tokens.ndim != 1 or tokens.numel() == 0:
        raise ValueError(f"prompt must be a non-empty 1-D sequence of token ids, got shape {tuple(tokens.shape)}")
    vocab = model.config.vocab_size
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise ValueError(f"prompt token ids must be in [0, {vocab}), got [{int(tokens.min())}, {int(tokens.max())}]")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    return _decode(model, tokens, max_new_tokens, sampling or SamplingParams(), eos_token_id, chunk_size)


def _decode(
    model: TnnLM,
    tokens: Tensor,
    max_new_tokens: int,
    sampling: SamplingParams,
    eos_token_id: int | None,
    chunk_size: int,
) -> Iterator[int]:
    if max_new_tokens == 0:
        return
    generator = sampling.generator(model.device)
    penalised = sampling.repetition_penalty != 1.0 or sampling.presence_penalty or sampling.frequency_penalty
    counts = torch.zeros(1, model.config.vocab_size, dtype=torch.long, device=model.device)  # (1, V) generated
    prompt_mask = torch.zeros(1, model.config.vocab_size, dtype=torch.bool, device=model.device)  # (1, V)
    prompt_mask[0, tokens] = True

    logits, state = model.prefill(tokens[None], chunk_size=chunk_size)  # (1, V)
    for i in range(max_new_tokens):
        result = sample(
            logits,
            [sampling],
            [generator],
            output_counts=counts if penalised else None,
            prompt_mask=prompt_mask if penalised else None,
        )
        if not bool(result.finite[0]):
            raise FloatingPointError(f"non-finite logits at generated token {i}; the model or its state is broken")
        token = result.tokens  # (1,)
        yield int(token[0])
        if (eos_token_id is not None and int(token[0]) == eos_token_id) or i == max_new_tokens - 1:
            return
        counts[0, token] += 1
        logits, state = model.step(token, state)


def generate(
    model: TnnLM,
    prompt: Sequence[int] | Tensor,
    *,
    max_new_tokens: int,
    sampling: SamplingParams | None = None,
    eos_token_id: int | None = None,
    on_token: Callable[[int], None] | None = None,
    chunk_size: int = 2048,
) -> list[int]:
    """Generated token ids (without the prompt); `on_token` is called with each id as soon as it is sampled.

    Stops after `max_new_tokens` or after `eos_token_id` (included). A seeded `sampling` is reproducible.
    """
    generated = []
    for token in stream(
        model,
        prompt,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        eos_token_id=eos_token_id,
        chunk_size=chunk_size,
    ):
        generated.append(token)
        if on_token is not None:
            on_token(token)
    return generated
