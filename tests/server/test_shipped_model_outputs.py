"""The shipped model behind a real `tnn serve`: it starts converted, chat turns end by its generation_config.json,
and 100 seeded structured-output samples (sent at once, so constrained rows share decode steps) all parse and
validate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import jsonschema
import openai
import pytest

import tnn.model
from tests.support import ServerProcess

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

SAMPLES = 100
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["merry", "sad", "wroth"]},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def shipped() -> Iterator[ServerProcess]:
    args = ["--served-model-name", "default", "--max-num-seqs", "32", "--max-waiting-requests", "256"]
    with ServerProcess(tnn.model.default_model_dir(), args=args) as server:
        yield server


def test_the_shipped_model_starts_converted(shipped: ServerProcess) -> None:
    """It ships ssm.safetensors: start-up loads the conversion instead of fitting it (seconds, not minutes)."""
    log = shipped.log()
    assert "ready: serving" in log and "converting on load" not in log


def test_models_show_the_generation_defaults(shipped: ServerProcess) -> None:
    with openai.OpenAI(base_url=shipped.url + "/v1", api_key="unused") as client:
        card = client.models.retrieve("default")
    defaults = card.model_extra["generation_defaults"]  # type: ignore[index]
    assert defaults["stop"] == ["\n\n"] and defaults["max_tokens"] == 256 and defaults["eos_token_ids"] == [0]


def test_chat_replies_end_at_the_end_of_a_speech(shipped: ServerProcess) -> None:
    with openai.OpenAI(base_url=shipped.url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        for seed, question in enumerate(["Who art thou?", "What news?", "Speak of love.", "Where is the king?"]):
            reply = client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": question}], seed=seed
            )
            (choice,) = reply.choices
            assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == "\n\n"  # type: ignore[index]
            assert reply.usage is not None and 0 < reply.usage.completion_tokens < 256
            assert choice.message.content and "\n\n" not in choice.message.content
            streamed = client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": question}], seed=seed, stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
            assert text == choice.message.content


def test_100_seeded_json_schema_samples_validate(shipped: ServerProcess) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "character", "schema": SCHEMA, "strict": True}}

    async def sample_all() -> list[openai.types.chat.ChatCompletion]:
        async with openai.AsyncOpenAI(
            base_url=shipped.url + "/v1", api_key="unused", max_retries=0, timeout=300
        ) as client:
            return await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="default",
                        messages=[{"role": "user", "content": "Describe a character of the play as JSON."}],
                        response_format=response_format,  # type: ignore[arg-type]
                        seed=seed,
                        max_tokens=64,
                    )
                    for seed in range(SAMPLES)
                )
            )

    replies = asyncio.run(sample_all())
    valid = 0
    for reply in replies:
        (choice,) = reply.choices
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content or ""), SCHEMA)
        valid += 1
    assert valid == SAMPLES
    assert len({r.choices[0].message.content for r in replies}) > SAMPLES // 4  # seeds give different samples
