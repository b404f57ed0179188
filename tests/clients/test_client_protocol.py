"""Pure protocol logic of tnn.clients: request bodies, error mapping, retry policy, SSE accumulation.

The SSE tests drive the real clients through `httpx.MockTransport`, feeding the body in small byte pieces so that
events arrive split across reads, as they do over a network.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import Iterator

import httpx
import pytest

from tnn.clients import (
    APIConnectionError,
    APIError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    ChatMessage,
    Client,
    InvalidResponseError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    ServiceUnavailableError,
    StreamError,
)
from tnn.clients.errors import error_from_response
from tnn.clients.protocol import StreamAccumulator, build_body, resolve_base_url
from tnn.clients.retry import parse_retry_after

NO_WAIT = RetryPolicy(max_retries=2, initial_delay=0.0, max_delay=0.0)


def completion_chunk(text: str, finish_reason: str | None = None) -> str:
    return json.dumps(
        {"id": "cmpl-1", "model": "m", "choices": [{"index": 0, "text": text, "finish_reason": finish_reason}]}
    )


def sse_body(*events: str, sep: str = "data: ") -> bytes:
    return "".join(f"{sep}{event}\n\n" for event in events).encode()


def pieces(data: bytes, size: int = 3) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class Pieces(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body delivered a few bytes at a time (sync and async), optionally failing after them."""

    def __init__(self, data: bytes, *, fail: Exception | None = None) -> None:
        self.data = data
        self.fail = fail

    def __iter__(self) -> Iterator[bytes]:
        yield from pieces(self.data)
        if self.fail is not None:
            raise self.fail

    async def __aiter__(self):  # type: ignore[override]
        for piece in pieces(self.data):
            yield piece
        if self.fail is not None:
            raise self.fail


def sse_response(data: bytes, *, fail: Exception | None = None) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Pieces(data, fail=fail))


# -- request bodies --------------------------------------------------------------------------------------------------


def test_build_body_omits_unset_fields_and_adds_stream_options() -> None:
    body = build_body(
        params={"max_tokens": 5, "stop": ("a", "b"), "extra_body": {"top_k": 3}}, prompt="hi", stream=True
    )
    assert body == {
        "prompt": "hi",
        "max_tokens": 5,
        "stop": ["a", "b"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "top_k": 3,
    }
    chat = build_body(
        params={"model": "x", "temperature": 0.0},
        messages=[ChatMessage("user", "q"), {"role": "assistant", "content": "a"}],
        stream=False,
    )
    assert chat == {
        "model": "x",
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "temperature": 0.0,
    }


def test_base_url_default_env_and_v1_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TNN_URL", raising=False)
    assert resolve_base_url(None) == "http://127.0.0.1:8000"
    monkeypatch.setenv("TNN_URL", "http://h:1/v1/")
    assert resolve_base_url(None) == "http://h:1"
    assert resolve_base_url("http://x:2/") == "http://x:2"


def test_api_key_from_env_is_sent_as_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TNN_API_KEY", "secret")
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"object": "list", "data": [{"id": "m"}]})

    with Client("http://test", transport=httpx.MockTransport(handler)) as client:
        assert [m.id for m in client.models()] == ["m"]
    assert seen == ["Bearer secret"]


# -- errors ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (422, BadRequestError),
        (401, AuthenticationError),
        (404, NotFoundError),
        (429, RateLimitError),
        (503, ServiceUnavailableError),
        (500, ServerError),
        (418, APIError),
    ],
)
def test_error_from_response_maps_status_and_openai_fields(status: int, cls: type[APIError]) -> None:
    body = {
        "error": {"message": "bad temperature", "type": "invalid_request_error", "param": "temperature", "code": None}
    }
    exc = error_from_response(status, json.dumps(body).encode(), retry_after=1.5)
    assert type(exc) is cls
    assert (exc.status_code, exc.message, exc.type, exc.param, exc.code, exc.retry_after) == (
        status,
        "bad temperature",
        "invalid_request_error",
        "temperature",
        None,
        1.5,
    )
    assert "bad temperature" in str(exc) and "param='temperature'" in str(exc)


@pytest.mark.parametrize(
    ("content", "message", "type_"),
    [
        (b'{"error": "Model is overloaded", "error_type": "overloaded"}', "Model is overloaded", "overloaded"),
        (b'{"detail": "Not Found"}', "Not Found", None),
        (b"upstream exploded", "upstream exploded", None),
        (b"", "HTTP 502 with no error message", None),
    ],
)
def test_error_from_response_tolerates_other_envelopes(content: bytes, message: str, type_: str | None) -> None:
    exc = error_from_response(502, content)
    assert isinstance(exc, ServerError)
    assert (exc.message, exc.type) == (message, type_)


# -- retry policy ----------------------------------------------------------------------------------------------------


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=3.0, jitter=0.25)
    for attempt, full in enumerate([0.5, 1.0, 2.0, 3.0, 3.0]):
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(0.75 * full <= d <= full for d in delays)
        assert len(delays) > 1  # jittered
    assert policy.delay(0, retry_after=7.0) == 7.0
    assert RetryPolicy(max_retry_after=2.0).delay(0, retry_after=30.0) == 2.0


def test_retry_policy_validates() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=2.0)


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-4") == 0.0
    now = 1_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 10, usegmt=True), now=now) == pytest.approx(10.0)


def test_retries_503_then_succeeds_and_gives_up_on_400() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            return httpx.Response(
                503, headers={"retry-after": "0"}, json={"error": {"message": "warming up", "type": "unavailable"}}
            )
        if json.loads(request.content).get("temperature") == -1:
            return httpx.Response(
                400, json={"error": {"message": "temperature", "type": "invalid_request_error", "param": "temperature"}}
            )
        return httpx.Response(
            200, json={"id": "c", "model": "m", "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]}
        )

    with Client("http://test", model="m", retry=NO_WAIT, transport=httpx.MockTransport(handler)) as client:
        assert client.complete("p").text == "ok"
        assert len(calls) == 2
        with pytest.raises(BadRequestError) as info:
            client.complete("p", temperature=-1)
    assert info.value.param == "temperature"
    assert len(calls) == 3  # a 400 is not retried


def test_gives_up_after_max_retries_with_the_last_error() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            429, headers={"retry-after": "0"}, json={"error": {"message": "busy", "type": "overloaded"}}
        )

    with Client("http://test", model="m", retry=NO_WAIT, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(RateLimitError) as info:
            client.complete("p")
    assert calls == 3 and info.value.retry_after == 0.0


# -- SSE -------------------------------------------------------------------------------------------------------------


def test_accumulator_handles_chat_usage_done_and_errors() -> None:
    acc = StreamAccumulator(chat=True)
    first = {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    assert acc.feed(json.dumps(first)) == ""
    assert acc.feed(json.dumps({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})) == "Hi"
    assert (
        acc.feed(json.dumps({"choices": [{"index": 0, "delta": {"content": None}, "finish_reason": "length"}]})) == ""
    )
    assert (
        acc.feed(json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}))
        == ""
    )
    assert acc.feed("[DONE]") == "" and acc.done
    result = acc.completion()
    assert (result.text, result.finish_reason, result.usage.total_tokens, result.id) == ("Hi", "length", 4, "c1")  # type: ignore[union-attr]
    with pytest.raises(StreamError) as info:
        acc.feed('{"error": {"message": "engine died", "type": "server_error", "code": "internal"}}')
    assert (info.value.message, info.value.type, info.value.code, info.value.status_code) == (
        "engine died",
        "server_error",
        "internal",
        200,
    )
    with pytest.raises(InvalidResponseError):
        acc.feed("not json")


@pytest.mark.parametrize("sep", ["data: ", "data:"])
def test_stream_parses_split_events_comments_and_stops_at_done(sep: str) -> None:
    body = (
        b": keep-alive\n\n"
        + sse_body(completion_chunk("Hel"), completion_chunk("lo, "), sep=sep)
        + b": ping\n\n"
        + sse_body(
            completion_chunk("wörld 🙂", "stop"),
            json.dumps({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}),
            "[DONE]",
            sep=sep,
        )
        + sse_body(completion_chunk("after done"))
    )
    transport = httpx.MockTransport(lambda request: sse_response(body))
    with Client("http://test", model="m", transport=transport) as client:
        stream = client.stream_complete("p")
        assert list(stream) == ["Hel", "lo, ", "wörld 🙂"]
    assert (stream.text, stream.finish_reason, stream.usage.completion_tokens) == ("Hello, wörld 🙂", "stop", 3)  # type: ignore[union-attr]

    async def collect() -> list[str]:
        async with AsyncClient("http://test", model="m", transport=transport) as aclient:
            return [delta async for delta in aclient.stream_complete("p")]

    assert asyncio.run(collect()) == ["Hel", "lo, ", "wörld 🙂"]


def test_stream_raises_on_error_event_after_deltas() -> None:
    body = sse_body(
        completion_chunk("partial"), '{"error": {"message": "out of memory", "type": "server_error"}}', "[DONE]"
    )
    with Client("http://test", model="m", transport=httpx.MockTransport(lambda r: sse_response(body))) as client:
        stream = client.stream_complete("p")
        got = []
        with pytest.raises(StreamError, match="out of memory"):
            for delta in stream:
                got.append(delta)
    assert got == ["partial"]


def test_stream_is_not_retried_once_started() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return sse_response(sse_body(completion_chunk("a")), fail=httpx.RemoteProtocolError("peer closed connection"))

    with Client("http://test", model="m", retry=NO_WAIT, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(APIConnectionError):
            list(client.stream_complete("p"))
    assert calls == 1


def test_stream_retries_429_before_it_starts() -> None:
    statuses = iter([429, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        if next(statuses) == 429:
            return httpx.Response(
                429, headers={"retry-after": "0"}, json={"error": {"message": "busy", "type": "overloaded"}}
            )
        return sse_response(sse_body(completion_chunk("ok", "stop"), "[DONE]"))

    with Client("http://test", model="m", retry=NO_WAIT, transport=httpx.MockTransport(handler)) as client:
        assert list(client.stream_complete("p")) == ["ok"]


def test_stream_closed_before_done_is_an_error_and_non_sse_is_invalid() -> None:
    truncated = httpx.MockTransport(lambda r: sse_response(sse_body(completion_chunk("a"))))
    with (
        Client("http://test", model="m", transport=truncated) as client,
        pytest.raises(APIConnectionError, match="DONE"),
    ):
        list(client.stream_complete("p"))
    not_sse = httpx.MockTransport(lambda r: httpx.Response(200, json={"choices": []}))
    with (
        Client("http://test", model="m", transport=not_sse) as client,
        pytest.raises(InvalidResponseError, match="event stream"),
    ):
        list(client.stream_complete("p"))


def test_model_defaults_to_the_servers_first_model() -> None:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "first"}, {"id": "second"}]})
        bodies.append(json.loads(request.content))
        return httpx.Response(
            200,
            json={
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}, "finish_reason": "stop"}]
            },
        )

    with Client("http://test", transport=httpx.MockTransport(handler)) as client:
        assert client.chat([ChatMessage("user", "hi")]).text == "yo"
        client.chat([ChatMessage("user", "hi")], model="second")
    assert [b["model"] for b in bodies] == ["first", "second"]
