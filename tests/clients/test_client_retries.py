"""Retries over real sockets: a stub server on 127.0.0.1 that answers 429 (with Retry-After) then succeeds, and a
closed port. The healthy tnn-serve cannot be made to answer 429 on demand, hence the stub.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.clients.helpers import StubReply, StubRequest, StubServer
from tests.support import free_port
from tnn.clients import APIConnectionError, AsyncClient, Client, RateLimitError, RetryPolicy

# No backoff of its own, so any wait measured comes from the server's Retry-After.
NO_BACKOFF = RetryPolicy(max_retries=2, initial_delay=0.0, max_delay=0.0)
RETRY_AFTER = 0.3
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
        with Client(stub.url, model="stub", retry=NO_BACKOFF) as client:
            start = time.monotonic()
            result = client.complete("hi", max_tokens=1)
            elapsed = time.monotonic() - start
    assert result.text == "hello" and result.usage is not None and result.usage.total_tokens == 3
    assert [r.path for r in stub.requests] == ["/v1/completions", "/v1/completions"]
    assert elapsed >= RETRY_AFTER


def test_async_stream_retries_429_before_streaming() -> None:
    chunks = [{"choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in ("a", "b")]

    async def collect(url: str) -> list[str]:
        async with AsyncClient(url, model="stub", retry=NO_BACKOFF) as client:
            return [delta async for delta in client.stream_complete("hi")]

    with StubServer(busy_once(StubReply.sse(chunks))) as stub:
        start = time.monotonic()
        assert asyncio.run(collect(stub.url)) == ["a", "b"]
        assert time.monotonic() - start >= RETRY_AFTER
    assert len(stub.requests) == 2 and stub.requests[1].body["stream"] is True


def test_gives_up_with_rate_limit_error_after_max_retries() -> None:
    with StubServer(lambda r: StubReply.json(BUSY, status=429, headers={"Retry-After": "0"})) as stub:
        with Client(stub.url, model="stub", retry=NO_BACKOFF) as client, pytest.raises(RateLimitError) as info:
            client.complete("hi")
    assert len(stub.requests) == 3
    assert (info.value.status_code, info.value.code, info.value.retry_after) == (429, "queue_full", 0.0)


def test_closed_port_is_a_connection_error_after_bounded_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    policy = RetryPolicy(max_retries=2, initial_delay=0.05)
    start = time.monotonic()
    with Client(url, model="m", retry=policy) as client, pytest.raises(APIConnectionError, match="cannot reach"):
        client.complete("hi")

    async def acomplete() -> None:
        async with AsyncClient(url, model="m", retry=policy) as aclient:
            await aclient.complete("hi")

    with pytest.raises(APIConnectionError):
        asyncio.run(acomplete())
    assert time.monotonic() - start < 3.0
