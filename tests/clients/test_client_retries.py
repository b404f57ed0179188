"""Retries over real sockets, by the SDK's `max_retries`, against a real `tnn serve` that is full: one state slot
and one queue place, both held by streams, so the next request is refused at once with the server's own 429
(`server_overloaded`, Retry-After: 1). Released while the client waits, the retry succeeds; never released, the
client gives up with `RateLimitError`. A closed port is a connection error after bounded retries.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from tests.clients.helpers import StubReply, StubRequest, StubServer
from tests.support import HeldStream, ServerProcess, free_port, metric_value, scrape_metrics
from tnn.clients import AsyncClient, Client

pytestmark = pytest.mark.timeout(180)

RETRY_AFTER = 1.0  # the server's Retry-After (seconds); the SDK waits exactly this long instead of its own backoff
HOLD = {"prompt": "To be", "max_tokens": 100000, "ignore_eos": True}
REQUEST = {"prompt": "To be", "max_tokens": 2}


@pytest.fixture(scope="module")
def full_server(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    """One state slot and one queue place: with both held, every other request is refused with 429."""
    args = ["--max-num-seqs", "1", "--max-waiting-requests", "1", "--max-tokens", "100000"]
    with ServerProcess(tiny_model_dir, args=args, env={"TNN_SERVED_MODEL_NAME": "tiny"}) as process:
        yield process


def refusals(url: str) -> float:
    return metric_value(scrape_metrics(url), "tnn_errors_total", code="429")


@contextmanager
def held_full(url: str, *, release_after_refusal: bool) -> Iterator[None]:
    """The server's slot and queue place taken by two held streams; released as soon as the server has refused a
    request (so a retry after Retry-After finds room), or else when the block ends."""
    running = HeldStream(url, HOLD)
    assert running.first.wait(30)
    queued = HeldStream(url, HOLD)
    deadline = time.monotonic() + 15
    while metric_value(scrape_metrics(url), "tnn_num_requests_waiting") != 1:
        assert time.monotonic() < deadline, "the second stream never queued"
        time.sleep(0.05)
    before = refusals(url)

    def release() -> None:
        running.close()  # first: the queued stream then starts, sees its close flag and ends
        queued.close()

    def release_after_a_refusal() -> None:
        deadline = time.monotonic() + 60
        while refusals(url) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        release()

    watcher = threading.Thread(target=release_after_a_refusal, daemon=True) if release_after_refusal else None
    if watcher is not None:
        watcher.start()
    try:
        yield
    finally:
        if watcher is not None:
            watcher.join(90)
        else:
            release()


def test_sync_retries_the_servers_429_honouring_retry_after(full_server: ServerProcess) -> None:
    before = refusals(full_server.url)
    with held_full(full_server.url, release_after_refusal=True), Client(full_server.url, max_retries=5) as client:
        start = time.monotonic()
        result = client.completions.create(model="tiny", **REQUEST, extra_body={"ignore_eos": True})
        elapsed = time.monotonic() - start
    assert result.choices[0].finish_reason == "length" and result.usage is not None
    assert result.usage.completion_tokens == 2
    refused = refusals(full_server.url) - before
    assert refused >= 1  # refused while full (more than once only if the release outlasted a Retry-After), then served
    assert elapsed >= refused * RETRY_AFTER


def test_async_stream_retries_the_servers_429_before_streaming(full_server: ServerProcess) -> None:
    async def collect() -> list[str | None]:
        """The finish reasons of the streamed chunks (None until the last)."""
        async with AsyncClient(full_server.url, max_retries=5) as client:
            stream = await client.completions.create(
                model="tiny", **REQUEST, stream=True, extra_body={"ignore_eos": True}
            )
            return [chunk.choices[0].finish_reason async for chunk in stream if chunk.choices]

    before = refusals(full_server.url)
    with held_full(full_server.url, release_after_refusal=True):
        start = time.monotonic()
        reasons = asyncio.run(collect())
        elapsed = time.monotonic() - start
    assert reasons[-1] == "length" and all(reason is None for reason in reasons[:-1])
    refused = refusals(full_server.url) - before
    assert refused >= 1
    assert elapsed >= refused * RETRY_AFTER


def test_gives_up_with_rate_limit_error_after_max_retries(full_server: ServerProcess) -> None:
    before = refusals(full_server.url)
    with held_full(full_server.url, release_after_refusal=False):
        with Client(full_server.url, max_retries=2) as client, pytest.raises(openai.RateLimitError) as info:
            client.completions.create(model="tiny", **REQUEST)
    assert refusals(full_server.url) - before == 3  # the first try and two retries
    assert (info.value.status_code, info.value.code) == (429, "server_overloaded")
    assert info.value.message.startswith("Error code: 429")


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
