"""`Client` and `AsyncClient` (the `openai` SDK's clients) against a real `tnn serve` subprocess (tiny random model,
API key required): sync, async, streaming, the SDK's typed errors, and the routes tnn.clients adds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.clients.helpers import API_KEY
from tests.support import ServerProcess
from tnn.clients import AsyncClient, Client

PROMPT = "The quick brown fox"
MESSAGES: list[Any] = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello there"}]
# Seeded sampling: the same request gives the same text, streamed or not. ignore_eos (a vLLM-style extension the
# server accepts) makes every answer exactly max_tokens long, so the comparisons are never trivially empty.
PARAMS: dict[str, Any] = {"max_tokens": 12, "temperature": 1.0, "seed": 7, "extra_body": {"ignore_eos": True}}


@pytest.fixture
def client(tnn_server: ServerProcess) -> Iterator[Client]:
    with Client(tnn_server.url, api_key=API_KEY) as c:
        yield c


@pytest.fixture
def model(client: Client) -> str:
    return client.models.list().data[0].id


def assert_full_answer(usage: openai.types.CompletionUsage | None, finish_reason: str | None) -> None:
    assert finish_reason == "length"
    assert usage is not None and usage.completion_tokens == 12
    assert usage.total_tokens == usage.prompt_tokens + 12


def test_complete_streamed_equals_whole(client: Client, model: str) -> None:
    whole = client.completions.create(model=model, prompt=PROMPT, **PARAMS)
    assert whole.choices[0].text
    assert_full_answer(whole.usage, whole.choices[0].finish_reason)
    stream = client.completions.create(
        model=model, prompt=PROMPT, stream=True, stream_options={"include_usage": True}, **PARAMS
    )
    chunks = list(stream)
    deltas = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(deltas) > 1 and "".join(deltas) == whole.choices[0].text
    assert chunks[-1].usage == whole.usage
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    again = client.completions.create(model=model, prompt=PROMPT, **PARAMS)
    assert again.choices[0].text == whole.choices[0].text  # the seed makes it reproducible


def test_chat_streamed_equals_whole(client: Client, model: str) -> None:
    whole = client.chat.completions.create(model=model, messages=MESSAGES, **PARAMS)
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].message.content
    assert_full_answer(whole.usage, whole.choices[0].finish_reason)
    with client.chat.completions.create(model=model, messages=MESSAGES, stream=True, **PARAMS) as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == whole.choices[0].message.content


def test_async_client_matches_sync(tnn_server: ServerProcess, client: Client, model: str) -> None:
    async def run() -> tuple[str, str, str, str, list[int]]:
        async with AsyncClient(tnn_server.url, api_key=API_KEY) as aclient:
            whole = await aclient.completions.create(model=model, prompt=PROMPT, **PARAMS)
            stream = await aclient.completions.create(model=model, prompt=PROMPT, stream=True, **PARAMS)
            streamed = "".join([c.choices[0].text async for c in stream if c.choices])
            chat = await aclient.chat.completions.create(model=model, messages=MESSAGES, **PARAMS)
            chat_stream = await aclient.chat.completions.create(model=model, messages=MESSAGES, stream=True, **PARAMS)
            chat_streamed = "".join([c.choices[0].delta.content or "" async for c in chat_stream if c.choices])
            assert await aclient.health() and await aclient.ready()
            assert await aclient.detokenize(await aclient.tokenize(PROMPT, add_special_tokens=False)) == PROMPT
            tokens = await aclient.tokenize(PROMPT)
            return whole.choices[0].text, streamed, chat.choices[0].message.content or "", chat_streamed, tokens

    whole, streamed, chat, chat_streamed, tokens = asyncio.run(run())
    assert streamed == whole == client.completions.create(model=model, prompt=PROMPT, **PARAMS).choices[0].text
    assert chat_streamed == chat
    assert tokens == client.tokenize(PROMPT)


def test_tokenize_detokenize_health_ready(client: Client, model: str) -> None:
    plain = client.tokenize(PROMPT, add_special_tokens=False)
    with_bos = client.tokenize(PROMPT)
    assert plain and all(isinstance(t, int) for t in plain)
    assert with_bos[1:] == plain and len(with_bos) == len(plain) + 1  # the tiny model's tokenizer adds a bos
    assert client.detokenize(plain) == PROMPT
    assert client.health() and client.ready()
    usage = client.completions.create(model=model, prompt=PROMPT, max_tokens=1).usage
    assert usage is not None and usage.prompt_tokens == len(with_bos)


def test_invalid_temperature_is_a_bad_request_naming_the_param(client: Client, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt=PROMPT, temperature=-1.0)
    assert info.value.status_code == 400 and "temperature" in (info.value.param or "")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt=PROMPT, temperature=-1.0, stream=True)


def test_unknown_model_is_not_found(client: Client) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="no-such-model", prompt=PROMPT)
    assert info.value.status_code == 404 and info.value.body


def test_wrong_api_key_is_an_authentication_error(tnn_server: ServerProcess) -> None:
    with Client(tnn_server.url, api_key="wrong") as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.completions.create(model="any", prompt=PROMPT, max_tokens=1)
        assert info.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="any", messages=MESSAGES, max_tokens=1, stream=True)
        with pytest.raises(openai.AuthenticationError):
            bad.tokenize(PROMPT)
        assert bad.health()  # liveness needs no key

    async def async_bad() -> None:
        async with AsyncClient(tnn_server.url, api_key="wrong") as abad:
            await abad.completions.create(model="any", prompt=PROMPT, max_tokens=1)

    with pytest.raises(openai.AuthenticationError):
        asyncio.run(async_bad())


def test_server_timeout_is_a_server_error_or_an_error_event_after_the_first_deltas(
    tnn_server: ServerProcess, model: str
) -> None:
    endless: dict[str, Any] = {"max_tokens": 1_000_000, "extra_body": {"ignore_eos": True}}
    with Client(tnn_server.url, api_key=API_KEY, max_retries=0) as client:  # the SDK would retry a 504
        with pytest.raises(openai.InternalServerError) as whole:
            client.completions.create(model=model, prompt=PROMPT, **endless)
        assert (whole.value.status_code, whole.value.code) == (504, "request_timeout")
        deltas: list[str] = []
        with pytest.raises(openai.APIError) as streamed:
            for chunk in client.completions.create(model=model, prompt=PROMPT, stream=True, **endless):
                deltas.append(chunk.choices[0].text)
    assert not isinstance(streamed.value, openai.APIStatusError)  # an error event inside a 200 stream
    assert "request_timeout" in str(streamed.value.body) and deltas
