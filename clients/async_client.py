"""`AsyncClient`: the asyncio HTTP client for tnn-serve and other OpenAI-compatible servers (mirrors `Client`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import Any, Unpack

import httpx
from httpx_sse import EventSource, SSEError

from tnn.clients.errors import InvalidResponseError, ServiceUnavailableError, error_from_response
from tnn.clients.protocol import (
    DEFAULT_TIMEOUT,
    GenerationParams,
    StreamAccumulator,
    StreamView,
    build_body,
    decode_json,
    map_transport_error,
    request_headers,
    resolve_base_url,
)
from tnn.clients.retry import RETRYABLE_TRANSPORT_ERRORS, RetryPolicy, parse_retry_after
from tnn.clients.types import Completion, Message, ModelInfo

__all__ = ["AsyncClient", "AsyncCompletionStream"]

logger = logging.getLogger(__name__)


class AsyncCompletionStream(StreamView, AsyncIterator[str]):
    """Text deltas of a streamed completion, yielded as the server sends them.

    The request is sent on the first `anext()`; errors (typed `TnnError`s) are raised from there. After the loop,
    `text`, `finish_reason`, `usage` and `completion` describe the whole answer. Closing the stream early (`aclose()`, or
    leaving an `async with` block) closes the connection, which makes tnn-serve cancel the generation.
    """

    def __init__(self, client: AsyncClient, path: str, body: dict[str, Any], *, chat: bool) -> None:
        self._accumulator = StreamAccumulator(chat=chat)
        self._events = self._run(client, path, body)

    async def _run(self, client: AsyncClient, path: str, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        response = await client._send("POST", path, body=await client._with_model(body), stream=True)
        try:
            async with aclosing(EventSource(response).aiter_sse()) as events:
                async for event in events:
                    delta = self._accumulator.feed(event.data)
                    if self._accumulator.done:
                        return
                    if delta:
                        yield delta
            self._accumulator.check_complete()
        except SSEError as exc:
            raise InvalidResponseError(f"{response.url} did not answer with an event stream: {exc}") from exc
        except httpx.TransportError as exc:
            raise map_transport_error(exc, str(response.url)) from exc
        finally:
            await response.aclose()

    async def __anext__(self) -> str:
        return await anext(self._events)

    async def aclose(self) -> None:
        """Stop reading and close the connection."""
        await self._events.aclose()

    async def __aenter__(self) -> AsyncCompletionStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncClient:
    """Asyncio client: OpenAI routes (`complete`, `chat`, `models`) work with any OpenAI-compatible server;
    `tokenize`, `detokenize`, `health` and `ready` are tnn-serve routes.

    Args:
        base_url: server root (`http://host:port`, a trailing `/v1` is accepted); default `$TNN_URL` or
            http://127.0.0.1:8000.
        api_key: sent as `Authorization: Bearer ...`; default `$TNN_API_KEY`.
        model: the `model` field of requests; default: the first model the server lists.
        timeout: seconds or an `httpx.Timeout`; default 600 s (5 s to connect).
        retry: retry policy for connection errors, 429 and 503; `RetryPolicy(max_retries=0)` disables retries.
        headers: extra headers sent with every request.
        transport: an httpx transport, for tests or custom networking.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self.model = model
        self.retry = retry or RetryPolicy()
        all_headers = request_headers(api_key, headers)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=all_headers, transport=transport
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- OpenAI routes -------------------------------------------------------------------------------------------

    async def complete(self, prompt: str, **params: Unpack[GenerationParams]) -> Completion:
        """`POST /v1/completions`; returns the whole completion."""
        body = build_body(params=params, prompt=prompt, stream=False)
        return Completion.from_openai(
            await self._post_json("/v1/completions", await self._with_model(body)), chat=False
        )

    def stream_complete(self, prompt: str, **params: Unpack[GenerationParams]) -> AsyncCompletionStream:
        """`POST /v1/completions` with `stream=true`; iterate the result for text deltas."""
        body = build_body(params=params, prompt=prompt, stream=True)
        return AsyncCompletionStream(self, "/v1/completions", body, chat=False)

    async def chat(self, messages: Sequence[Message], **params: Unpack[GenerationParams]) -> Completion:
        """`POST /v1/chat/completions`; `text` of the result is the assistant's answer."""
        body = build_body(params=params, messages=messages, stream=False)
        return Completion.from_openai(
            await self._post_json("/v1/chat/completions", await self._with_model(body)), chat=True
        )

    def stream_chat(self, messages: Sequence[Message], **params: Unpack[GenerationParams]) -> AsyncCompletionStream:
        """`POST /v1/chat/completions` with `stream=true`; iterate the result for text deltas."""
        body = build_body(params=params, messages=messages, stream=True)
        return AsyncCompletionStream(self, "/v1/chat/completions", body, chat=True)

    async def models(self) -> list[ModelInfo]:
        """`GET /v1/models`."""
        response = await self._send("GET", "/v1/models")
        return ModelInfo.list_from_openai(decode_json(response.content, str(response.url)))

    # -- tnn-serve routes ----------------------------------------------------------------------------------------

    async def tokenize(self, text: str) -> list[int]:
        """`POST /tokenize`: the token ids of `text`."""
        data = await self._post_json("/tokenize", {"prompt": text})
        try:
            return [int(t) for t in data["tokens"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidResponseError(f"unexpected /tokenize response: {data!r}") from exc

    async def detokenize(self, tokens: Sequence[int]) -> str:
        """`POST /detokenize`: the text of `tokens`."""
        data = await self._post_json("/detokenize", {"tokens": list(tokens)})
        try:
            return str(data["prompt"])
        except (KeyError, TypeError) as exc:
            raise InvalidResponseError(f"unexpected /detokenize response: {data!r}") from exc

    async def health(self) -> bool:
        """`GET /health` (liveness), one attempt: True on 2xx, False on 503; other failures raise."""
        return await self._probe("/health")

    async def ready(self) -> bool:
        """`GET /ready` (model loaded, not draining), one attempt: True on 2xx, False on 503; other failures raise."""
        return await self._probe("/ready")

    # -- plumbing ------------------------------------------------------------------------------------------------

    async def _with_model(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` with the client's model filled in (asking the server for its first model once, if needed)."""
        if "model" in body:
            return body
        if self.model is None:
            models = await self.models()
            if not models:
                raise InvalidResponseError(f"{self.base_url}/v1/models lists no model; pass model=...")
            self.model = models[0].id
        return {"model": self.model, **body}

    async def _probe(self, path: str) -> bool:
        try:
            response = await self._send("GET", path, retry=RetryPolicy(max_retries=0))
        except ServiceUnavailableError:
            return False
        return response.is_success

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        response = await self._send("POST", path, body=body)
        return decode_json(response.content, str(response.url))

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        stream: bool = False,
        retry: RetryPolicy | None = None,
    ) -> httpx.Response:
        """Send with retries; return a response with status < 400 (unread when `stream`), or raise a `TnnError`."""
        policy = retry or self.retry
        request = self._http.build_request(method, path, json=body)
        url = str(request.url)
        attempt = 0
        while True:
            try:
                response = await self._http.send(request, stream=stream)
                if response.status_code < 400:
                    return response
                await response.aread()
                await response.aclose()
            except RETRYABLE_TRANSPORT_ERRORS as exc:
                if attempt >= policy.max_retries:
                    raise map_transport_error(exc, url) from exc
                delay = policy.delay(attempt)
                logger.warning(
                    "%s %s failed (%s); retry %d/%d in %.2fs", method, url, exc, attempt + 1, policy.max_retries, delay
                )
            except httpx.TransportError as exc:
                raise map_transport_error(exc, url) from exc
            else:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                if attempt >= policy.max_retries or not policy.should_retry_status(response.status_code):
                    raise error_from_response(response.status_code, response.content, retry_after=retry_after)
                delay = policy.delay(attempt, retry_after)
                logger.warning(
                    "%s %s answered %d; retry %d/%d in %.2fs",
                    method,
                    url,
                    response.status_code,
                    attempt + 1,
                    policy.max_retries,
                    delay,
                )
            await asyncio.sleep(delay)
            attempt += 1
