"""`Client` and `AsyncClient` against a real `tnn serve` subprocess (tiny random model, API key required)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.clients.helpers import API_KEY
from tests.support import ServerProcess
from tnn.clients import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    ChatMessage,
    Client,
    Completion,
    GenerationParams,
    NotFoundError,
    ServerError,
    StreamError,
)

PROMPT = "The quick brown fox"
MESSAGES = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "Hello there")]
# Seeded sampling: the same request gives the same text, streamed or not. ignore_eos (a vLLM-style extension the
# server accepts) makes every answer exactly max_tokens long, so the comparisons are never trivially empty.
PARAMS = GenerationParams(max_tokens=12, temperature=1.0, seed=7, extra_body={"ignore_eos": True})


@pytest.fixture
def client(tnn_server: ServerProcess) -> Iterator[Client]:
    with Client(tnn_server.url, api_key=API_KEY) as c:
        yield c


def assert_full_answer(result: Completion) -> None:
    assert result.text
    assert result.finish_reason == "length"
    assert result.usage is not None and result.usage.completion_tokens == 12
    assert result.usage.total_tokens == result.usage.prompt_tokens + 12


def test_complete_streamed_equals_whole(client: Client) -> None:
    whole = client.complete(PROMPT, **PARAMS)
    assert_full_answer(whole)
    with client.stream_complete(PROMPT, **PARAMS) as stream:
        deltas = list(stream)
    assert len(deltas) > 1
    assert "".join(deltas) == stream.text == whole.text
    assert stream.usage == whole.usage and stream.finish_reason == "length"
    assert client.complete(PROMPT, **PARAMS).text == whole.text  # the seed makes it reproducible


def test_chat_streamed_equals_whole(client: Client) -> None:
    whole = client.chat(MESSAGES, **PARAMS)
    assert_full_answer(whole)
    with client.stream_chat(MESSAGES, **PARAMS) as stream:
        assert "".join(stream) == whole.text
    assert stream.completion.usage == whole.usage


def test_async_client_matches_sync(tnn_server: ServerProcess, client: Client) -> None:
    async def run() -> tuple[Completion, str, Completion, str]:
        async with AsyncClient(tnn_server.url, api_key=API_KEY) as aclient:
            whole = await aclient.complete(PROMPT, **PARAMS)
            async with aclient.stream_complete(PROMPT, **PARAMS) as stream:
                streamed = "".join([delta async for delta in stream])
            chat = await aclient.chat(MESSAGES, **PARAMS)
            chat_streamed = "".join([delta async for delta in aclient.stream_chat(MESSAGES, **PARAMS)])
            assert await aclient.health() and await aclient.ready()
            return whole, streamed, chat, chat_streamed

    whole, streamed, chat, chat_streamed = asyncio.run(run())
    assert_full_answer(whole)
    assert streamed == whole.text == client.complete(PROMPT, **PARAMS).text
    assert chat_streamed == chat.text == client.chat(MESSAGES, **PARAMS).text


def test_models_tokenize_detokenize_health_ready(client: Client) -> None:
    models = client.models()
    assert models and models[0].id
    tokens = client.tokenize(PROMPT)
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert PROMPT in client.detokenize(tokens)
    assert client.health() and client.ready()
    assert client.complete(PROMPT, model=models[0].id, max_tokens=1).usage is not None


def test_invalid_temperature_is_a_bad_request_naming_the_param(client: Client) -> None:
    with pytest.raises(BadRequestError) as info:
        client.complete(PROMPT, temperature=-1.0)
    assert info.value.status_code == 400 and "temperature" in (info.value.param or "")
    stream = client.stream_complete(PROMPT, temperature=-1.0)
    with pytest.raises(BadRequestError):
        next(stream)


def test_unknown_model_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError) as info:
        client.complete(PROMPT, model="no-such-model")
    assert info.value.status_code == 404 and info.value.message


def test_wrong_api_key_is_an_authentication_error(tnn_server: ServerProcess) -> None:
    with Client(tnn_server.url, api_key="wrong", model="any") as bad:
        with pytest.raises(AuthenticationError) as info:
            bad.complete(PROMPT, max_tokens=1)
        assert info.value.status_code == 401 and info.value.message
        with pytest.raises(AuthenticationError):
            list(bad.stream_chat(MESSAGES, max_tokens=1))
        assert bad.health()  # liveness needs no key

    async def async_bad() -> None:
        async with AsyncClient(tnn_server.url, api_key="wrong", model="any") as abad:
            await abad.complete(PROMPT, max_tokens=1)

    with pytest.raises(AuthenticationError):
        asyncio.run(async_bad())


def test_server_timeout_is_a_server_error_or_a_stream_error_after_the_first_deltas(client: Client) -> None:
    endless = GenerationParams(max_tokens=1_000_000, extra_body={"ignore_eos": True})
    with pytest.raises(ServerError) as whole:
        client.complete(PROMPT, **endless)
    assert (whole.value.status_code, whole.value.code) == (504, "request_timeout")  # 504 is not retried
    deltas: list[str] = []
    with pytest.raises(StreamError) as streamed, client.stream_complete(PROMPT, **endless) as stream:
        for delta in stream:
            deltas.append(delta)
    assert streamed.value.code == "request_timeout" and streamed.value.message
    assert deltas and stream.text == "".join(deltas)  # what arrived before the error is kept
    assert stream.finish_reason is None
