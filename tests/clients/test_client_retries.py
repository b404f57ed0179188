"""Retries over real sockets, by the SDK's `max_retries`: a stub server on 127.0.0.1 that answers 429 (with
Retry-After) then succeeds, and a closed port. The healthy tnn-serve cannot be made to answer 429 on demand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import openai
import pytest

from tests.clients.helpers import StubReply, StubRequest, StubServer
from tests.support import free_port
from tnn.clients import AsyncClient, Client

RETRY_AFTER = 0.3  # the SDK waits exactly this long when the server says so, instead of its own backoff
COMPLETION = {
    "id": "cmpl-stub",
    "object": "text_completion",
    "created": 0,
    "model": "stub",
    "choices": [{"index": 0, "text": "hello", "logprobs": None, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
}
BUSY = {"error": {"message": "queue full", "type": "overloaded_error", "param": None, "code": "queue_full"}}


def busy_once(then: StubReply) -> Callable[[StubRequest], StubReply]:
    """A stub script: 429 with Retry-After for the first request, `then` for every later one."""
    calls = 0

    def script(request: StubRequest) -> StubReply:
        nonlocal calls
        calls += 1
        return StubReply.json(BUSY, status=429, headers={"Retry-After": str(RETRY_AFTER)}) if calls == 1 else then

    return script


def test_sync_retries_429_honouring_retry_after() -> None:
    with StubServer(busy_once(StubReply.json(COMPLETION))) as stub:
        with Client(stub.url, max_retries=2) as client:
            start = time.monotonic()
            result = client.completions.create(model="stub", prompt="hi", max_tokens=1)
            elapsed = time.monotonic() - start
    assert result.choices[0].text == "hello" and result.usage is not None and result.usage.total_tokens == 3
    assert [r.path for r in stub.requests] == ["/v1/completions", "/v1/completions"]
    assert elapsed >= RETRY_AFTER


def test_async_stream_retries_429_before_streaming() -> None:
    chunks = [{"id": "c", "object": "text_completion", "created": 0, "model": "stub",
               "choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in ("a", "b")]  # fmt: skip

    async def collect(url: str) -> list[str]:
        async with AsyncClient(url, max_retries=2) as client:
            stream = await client.completions.create(model="stub", prompt="hi", stream=True)
            return [chunk.choices[0].text async for chunk in stream]

    with StubServer(busy_once(StubReply.sse(chunks))) as stub:
        start = time.monotonic()
        assert asyncio.run(collect(stub.url)) == ["a", "b"]
        assert time.monotonic() - start >= RETRY_AFTER
    assert len(stub.requests) == 2 and stub.requests[1].body["stream"] is True


def test_gives_up_with_rate_limit_error_after_max_retries() -> None:
    with StubServer(lambda r: StubReply.json(BUSY, status=429, headers={"Retry-After": "0.01"})) as stub:
        with Client(stub.url, max_retries=2) as client, pytest.raises(openai.RateLimitError) as info:
            client.completions.create(model="stub", prompt="hi")
    assert len(stub.requests) == 3
    assert (info.value.status_code, info.value.code, info.value.message.startswith("Error code: 429")) == (
        429,
        "queue_full",
        True,
    )


def test_closed_port_is_a_connection_error_after_bounded_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with Client(url, max_retries=1) as client, pytest.raises(openai.APIConnectionError):
        client.completions.create(model="m", prompt="hi")

    async def acomplete() -> None:
        async with AsyncClient(url, max_retries=0) as aclient:
            await aclient.completions.create(model="m", prompt="hi")

    with pytest.raises(openai.APIConnectionError):
        asyncio.run(acomplete())
    assert time.monotonic() - start < 5.0


def test_url_and_key_from_environment_with_or_without_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def script(request: StubRequest) -> StubReply:
        return StubReply.json({"tokens": [5, 6], "count": 2, "max_model_len": 9, "token_strs": ["a", "b"]})

    with StubServer(script) as stub:
        for url in (stub.url, stub.url + "/v1", stub.url + "/v1/"):
            monkeypatch.setenv("TNN_URL", url)
            monkeypatch.setenv("TNN_API_KEY", "env-key")
            with Client() as client:
                seen.append(str(client.base_url))
                assert client.tokenize("ab") == [5, 6]
    assert seen == [stub.url + "/v1/"] * 3
    assert [r.path for r in stub.requests] == ["/tokenize"] * 3
    assert stub.requests[0].headers["authorization"] == "Bearer env-key"
