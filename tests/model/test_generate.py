"""generate() / stream(): the library decode loop on top of prefill, step and sampling."""

from __future__ import annotations

import pytest
import torch

from tests.model.helpers import tiny_model
from tnn.model import TnnLM, attach_ssm
from tnn.model.generate import generate, stream
from tnn.model.sampling import SamplingParams

PROMPT = [3, 14, 15, 92, 65]


@pytest.fixture(scope="module")
def model() -> TnnLM:
    return attach_ssm(tiny_model(seed=0))


def test_greedy_equals_argmax_of_the_parallel_forward(model: TnnLM) -> None:
    got = generate(model, PROMPT, max_new_tokens=12, sampling=SamplingParams(temperature=0.0))
    tokens = list(PROMPT)
    for _ in range(12):  # the original way: recompute the forward over the whole prefix per token
        tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    assert got == tokens[len(PROMPT) :]


def test_seeded_sampling_is_reproducible(model: TnnLM) -> None:
    params = SamplingParams(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.2, seed=123)
    first = generate(model, PROMPT, max_new_tokens=20, sampling=params)
    assert first == generate(model, torch.tensor(PROMPT), max_new_tokens=20, sampling=params)
    assert len(first) == 20 and all(0 <= t < model.config.vocab_size for t in first)
    other = generate(model, PROMPT, max_new_tokens=20, sampling=SamplingParams(temperature=1.0, seed=124))
    assert other != first


def test_stream_callback_and_eos(model: TnnLM) -> None:
    params = SamplingParams(temperature=1.0, seed=5)
    full = list(stream(model, PROMPT, max_new_tokens=10, sampling=params))
    seen: list[int] = []
    eos = full[3]
    stopped = generate(model, PROMPT, max_new_tokens=10, sampling=params, eos_token_id=eos, on_token=seen.append)
    assert stopped == full[: full.index(eos) + 1] == seen
    assert generate(model, PROMPT, max_new_tokens=0) == []


def test_bad_prompts_are_refused_before_decoding(model: TnnLM) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        stream(model, [], max_new_tokens=3)
    with pytest.raises(ValueError, match=r"\[0, 97\)"):
        stream(model, [1, 97], max_new_tokens=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        stream(model, [1], max_new_tokens=-1)


def test_non_finite_logits_raise_instead_of_sampling() -> None:
    broken = attach_ssm(tiny_model(seed=0))
    with torch.no_grad():
        broken.final_norm.bias[0] = float("nan")  # type: ignore[union-attr]
    with pytest.raises(FloatingPointError, match="non-finite"):
        generate(broken, PROMPT, max_new_tokens=3, sampling=SamplingParams(seed=0))
