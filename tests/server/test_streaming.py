"""Streaming (SSE) and concurrency through the official `openai` package and httpx, against a real server."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def oai(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


async def stream_completion(http: httpx.AsyncClient, body: dict) -> tuple[str, list[dict]]:
    """POST a streaming completion; return the concatenated text and every parsed event (without [DONE])."""
    events = []
    async with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        events.append(json.loads(line[len("data: ") :]))
    text = "".join(c["text"] for e in events for c in e.get("choices", []))
    return text, events


def test_openai_completions(oai: openai.OpenAI) -> None:
    result = oai.completions.create(model="tiny", prompt="To be", max_tokens=6, seed=4, extra_body={"ignore_eos": True})
    assert result.choices[0].finish_reason == "length" and result.usage.completion_tokens == 6
    chunks = list(
        oai.completions.create(
            model="tiny", prompt="To be", max_tokens=6, seed=4, stream=True, extra_body={"ignore_eos": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == result.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_openai_chat(oai: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    result = oai.chat.completions.create(model="tiny", messages=messages, max_tokens=8, seed=9)
    assert result.choices[0].message.role == "assistant"
    stream = oai.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, seed=9, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == result.choices[0].message.content
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and result.usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        result.usage.prompt_tokens,
        result.usage.completion_tokens,
    )
    assert usage.prompt_tokens_details is not None and result.usage.prompt_tokens_details is not None
    # the second request (same prompt) starts from a state the first left in the prefix-state cache: at least
    # its system prompt's, never the whole prompt (the last prompt token is always prefilled for its logits)
    assert 0 < usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == result.choices[0].finish_reason


def test_openai_errors_map_to_exceptions(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai.completions.create(model="tiny", prompt="x", temperature=9)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="nope", prompt="x")


def test_streamed_text_equals_complete_text_with_utf8_and_stops(server: ServerProcess) -> None:
    asyncio.run(_streamed_equals_complete(server))


async def _streamed_equals_complete(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        for seed in range(6):
            body = {"prompt": "日本語 🙂 café", "max_tokens": 40, "seed": seed, "ignore_eos": True}
            full = (await http.post("/v1/completions", json=body)).json()["choices"][0]["text"]
            streamed, events = await stream_completion(http, body)
            assert streamed == full
            stop = full[12:15]
            cut = (await http.post("/v1/completions", json={**body, "stop": stop})).json()["choices"][0]
            streamed_cut, events = await stream_completion(http, {**body, "stop": stop})
            assert streamed_cut == cut["text"] == full[: full.index(stop)]
            assert stop not in streamed_cut
            assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_32_concurrent_streams_are_complete_and_batch_invariant(server: ServerProcess) -> None:
    """Each request alone, then all 32 at once: same text (per-row seeded sampling), right token counts."""
    asyncio.run(_concurrent_streams(server))


async def _concurrent_streams(server: ServerProcess) -> None:
    bodies = [
        {
            "prompt": ["To be", "or not to be", "that is", "the question"][i % 4],
            "max_tokens": 10 + i,
            "seed": 1000 + i,
            "temperature": 1.0,
            "top_p": 0.95 if i % 2 else 1.0,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
        for i in range(32)
    ]
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        alone = [await stream_completion(http, body) for body in bodies]
        together = await asyncio.gather(*(stream_completion(http, body) for body in bodies))
    for body, (text_alone, _), (text, events) in zip(bodies, alone, together, strict=True):
        assert text == text_alone
        usage = events[-1]["usage"]
        assert events[-1]["choices"] == [] and usage["completion_tokens"] == body["max_tokens"]
        assert events[-2]["choices"][0]["finish_reason"] == "length"
