"""`Client` / `AsyncClient`: the `openai` SDK's clients configured for tnn-serve, plus its non-OpenAI routes.

Everything OpenAI (completions, chat, models, embeddings, typed errors, retries with Retry-After, SSE streams,
timeouts) is the SDK's own; these classes only pick the server and key from TNN_URL / TNN_API_KEY and add
`tokenize`, `detokenize`, `health` and `ready`, which tnn-serve serves next to /v1 (vLLM's shapes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import openai

__all__ = ["DEFAULT_URL", "AsyncClient", "Client", "api_base_url"]

DEFAULT_URL = "http://127.0.0.1:8000"
NO_KEY = "EMPTY"  # what the SDK sends when the server needs no key (it insists on one; vLLM's convention)


def api_base_url(base_url: str | None) -> str:
    """The SDK's base URL (`.../v1`): the argument, else $TNN_URL, else http://127.0.0.1:8000; /v1 optional."""
    root = (base_url or os.environ.get("TNN_URL") or DEFAULT_URL).rstrip("/").removesuffix("/v1")
    return f"{root}/v1"


def api_key_or_placeholder(api_key: str | None) -> str:
    """The argument, else $TNN_API_KEY, else a placeholder that a server without a key ignores."""
    return api_key or os.environ.get("TNN_API_KEY") or NO_KEY


def server_url(client: openai.OpenAI | openai.AsyncOpenAI, path: str) -> str:
    """The absolute URL of a route next to /v1 (the SDK sends a relative path under base_url)."""
    return str(client.base_url).rstrip("/").removesuffix("/v1") + path


def tokens_of(data: Any) -> list[int]:
    """The `tokens` of a /tokenize answer."""
    return [int(token) for token in data["tokens"]]


class Client(openai.OpenAI):
    """`openai.OpenAI` for tnn-serve: `Client()` talks to $TNN_URL (default http://127.0.0.1:8000) with $TNN_API_KEY.

    `base_url` may be the server root or end in /v1. Other keyword arguments are the SDK's (`timeout`,
    `max_retries`, `default_headers`, `http_client`, ...).
    """

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None, **options: Any) -> None:
        super().__init__(base_url=api_base_url(base_url), api_key=api_key_or_placeholder(api_key), **options)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """`POST /tokenize`: the token ids the completion routes would use for `text`."""
        body = {"prompt": text, "add_special_tokens": add_special_tokens}
        return tokens_of(self.post(server_url(self, "/tokenize"), body=body, cast_to=object))

    def detokenize(self, tokens: Sequence[int]) -> str:
        """`POST /detokenize`: the text of `tokens`."""
        data: Any = self.post(server_url(self, "/detokenize"), body={"tokens": list(tokens)}, cast_to=object)
        return str(data["prompt"])

    def health(self) -> bool:
        """`GET /health` (liveness), one attempt: True on 2xx, False on 503; other failures raise."""
        return self._probe("/health")

    def ready(self) -> bool:
        """`GET /ready` (loaded, warmed up, not draining), one attempt: True on 2xx, False on 503."""
        return self._probe("/ready")

    def _probe(self, path: str) -> bool:
        try:
            self.get(server_url(self, path), cast_to=object, options={"max_retries": 0})
        except openai.APIStatusError as exc:
            if exc.status_code == 503:
                return False
            raise
        return True


class AsyncClient(openai.AsyncOpenAI):
    """`openai.AsyncOpenAI` for tnn-serve; the same configuration and extra routes as `Client`, as coroutines."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None, **options: Any) -> None:
        super().__init__(base_url=api_base_url(base_url), api_key=api_key_or_placeholder(api_key), **options)

    async def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """`POST /tokenize`: the token ids the completion routes would use for `text`."""
        body = {"prompt": text, "add_special_tokens": add_special_tokens}
        return tokens_of(await self.post(server_url(self, "/tokenize"), body=body, cast_to=object))

    async def detokenize(self, tokens: Sequence[int]) -> str:
        """`POST /detokenize`: the text of `tokens`."""
        data: Any = await self.post(server_url(self, "/detokenize"), body={"tokens": list(tokens)}, cast_to=object)
        return str(data["prompt"])

    async def health(self) -> bool:
        """`GET /health` (liveness), one attempt: True on 2xx, False on 503; other failures raise."""
        return await self._probe("/health")

    async def ready(self) -> bool:
        """`GET /ready` (loaded, warmed up, not draining), one attempt: True on 2xx, False on 503."""
        return await self._probe("/ready")

    async def _probe(self, path: str) -> bool:
        try:
            await self.get(server_url(self, path), cast_to=object, options={"max_retries": 0})
        except openai.APIStatusError as exc:
            if exc.status_code == 503:
                return False
            raise
        return True
