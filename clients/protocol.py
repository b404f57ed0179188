"""Wire-format helpers shared by the sync and async clients: configuration defaults, request bodies, error mapping,
and the accumulator that turns streamed SSE `data` payloads into text deltas.

Nothing here does I/O, so the protocol logic is tested once for both clients.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import httpx

from tnn.clients.errors import APIConnectionError, APITimeoutError, InvalidResponseError, TnnError, stream_error
from tnn.clients.types import ChatMessage, Completion, Message, Usage

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "GenerationParams",
    "StreamAccumulator",
    "StreamView",
    "request_headers",
    "build_body",
    "decode_json",
    "map_transport_error",
    "resolve_api_key",
    "resolve_base_url",
]

DEFAULT_URL = "http://127.0.0.1:8000"
# Generation can legitimately take minutes; connecting must not.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)


class GenerationParams(TypedDict, total=False):
    """Optional OpenAI sampling fields accepted by `complete`/`chat` and their streaming variants.

    `model` defaults to the client's model (or the server's first model); `extra_body` is merged into the request
    as-is, for server-specific fields such as `top_k`.
    """

    model: str
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: str | Sequence[str]
    extra_body: Mapping[str, Any]


def resolve_base_url(base_url: str | None) -> str:
    """The server root: the argument, else `$TNN_URL`, else http://127.0.0.1:8000; a trailing `/v1` is dropped."""
    url = (base_url or os.environ.get("TNN_URL") or DEFAULT_URL).rstrip("/")
    return url.removesuffix("/v1")


def resolve_api_key(api_key: str | None) -> str | None:
    """The API key: the argument, else `$TNN_API_KEY`, else none."""
    return api_key or os.environ.get("TNN_API_KEY") or None


def build_body(
    *,
    params: GenerationParams,
    prompt: str | None = None,
    messages: Sequence[Message] | None = None,
    stream: bool,
) -> dict[str, Any]:
    """The JSON body of `/v1/completions` (prompt) or `/v1/chat/completions` (messages); unset fields are omitted.

    `model` is set only when `params` names one; the client fills in its default before sending. Streams ask for
    the final usage chunk (`stream_options.include_usage`).
    """
    body: dict[str, Any] = {"model": params["model"]} if "model" in params else {}
    if prompt is not None:
        body["prompt"] = prompt
    if messages is not None:
        body["messages"] = [m.to_dict() if isinstance(m, ChatMessage) else dict(m) for m in messages]
    for name in ("max_tokens", "temperature", "top_p", "seed"):
        if params.get(name) is not None:
            body[name] = params[name]
    stop = params.get("stop")
    if stop is not None:
        body["stop"] = stop if isinstance(stop, str) else list(stop)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(params.get("extra_body") or {})
    return body


def map_transport_error(exc: httpx.TransportError, url: str) -> TnnError:
    """The client exception for an httpx transport failure."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request to {url} timed out ({type(exc).__name__})")
    return APIConnectionError(f"cannot reach {url}: {exc or type(exc).__name__}")


def decode_json(content: bytes, url: str) -> Any:
    """Decode a successful response body, or raise `InvalidResponseError`."""
    try:
        return json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidResponseError(f"{url} did not return JSON: {content[:200]!r}") from exc


class StreamAccumulator:
    """Consumes the `data` payloads of an OpenAI SSE stream, one event at a time.

    `feed` returns the text delta of the event ("" when it carries none), sets `done` at `[DONE]`, and raises
    `StreamError` on an error event. `text`, `finish_reason` and `usage` grow as events arrive.
    """

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat
        self.done = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.id = ""
        self.model = ""
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        """Everything received so far."""
        return "".join(self._parts)

    def feed(self, data: str) -> str:
        """Process one event's `data`; return its text delta."""
        if data.strip() == "[DONE]":
            self.done = True
            return ""
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise InvalidResponseError(f"stream event is not JSON: {data[:200]!r}") from exc
        if not isinstance(chunk, dict):
            raise InvalidResponseError(f"stream event is not a JSON object: {data[:200]!r}")
        if "error" in chunk:
            raise stream_error(chunk["error"])
        self.id = self.id or str(chunk.get("id") or "")
        self.model = self.model or str(chunk.get("model") or "")
        if chunk.get("usage"):
            self.usage = Usage.from_dict(chunk["usage"])
        choices = chunk.get("choices") or []
        if not choices:  # e.g. the usage-only chunk
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
        if delta:
            self._parts.append(delta)
        return delta or ""

    def check_complete(self) -> None:
        """Raise if the stream ended (connection closed) before `[DONE]` and without a finish reason."""
        if not self.done and self.finish_reason is None:
            raise APIConnectionError("the server closed the stream before it finished ([DONE] never arrived)")

    def completion(self) -> Completion:
        """The whole result so far, as `complete`/`chat` would have returned it."""
        return Completion(
            text=self.text, finish_reason=self.finish_reason, usage=self.usage, id=self.id, model=self.model
        )


class StreamView:
    """What a stream has received so far; shared by the sync and async stream classes."""

    _accumulator: StreamAccumulator

    @property
    def text(self) -> str:
        """The text received so far."""
        return self._accumulator.text

    @property
    def finish_reason(self) -> str | None:
        """`stop`, `length`, ... once the server sent it."""
        return self._accumulator.finish_reason

    @property
    def usage(self) -> Usage | None:
        """Token counts, once the server sent them (at the end of the stream)."""
        return self._accumulator.usage

    @property
    def completion(self) -> Completion:
        """Everything received so far as a `Completion`."""
        return self._accumulator.completion()


def request_headers(api_key: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    """Headers sent with every request: the bearer key (argument or $TNN_API_KEY) and any extras."""
    key = resolve_api_key(api_key)
    all_headers = {"Authorization": f"Bearer {key}"} if key else {}
    all_headers.update(headers or {})
    return all_headers
