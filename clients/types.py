"""Typed results of the client calls, parsed from OpenAI-compatible JSON.

Only fields of the OpenAI schema are relied on; everything the server sent is kept in `raw`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tnn.clients.errors import InvalidResponseError

__all__ = ["ChatMessage", "Completion", "Message", "ModelInfo", "Usage"]

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn."""

    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


# A chat message as a `ChatMessage` or as an OpenAI-style mapping {"role": ..., "content": ...}.
Message = ChatMessage | Mapping[str, str]


@dataclass(frozen=True)
class Usage:
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        try:
            prompt, completion = int(data["prompt_tokens"]), int(data.get("completion_tokens") or 0)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidResponseError(f"malformed usage object: {data!r}") from exc
        return cls(prompt, completion, int(data.get("total_tokens") or prompt + completion))


@dataclass(frozen=True)
class Completion:
    """The result of `complete` or `chat` (for chat, `text` is the assistant message content)."""

    text: str
    finish_reason: str | None
    usage: Usage | None
    id: str = ""
    model: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_openai(cls, data: Any, *, chat: bool) -> Completion:
        """Parse a `text_completion` (chat=False) or `chat.completion` (chat=True) response body; first choice."""
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") if chat else choice["text"]
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            kind = "chat.completion" if chat else "text_completion"
            raise InvalidResponseError(f"not an OpenAI {kind} response: {data!r}") from exc
        usage = data.get("usage")
        return cls(
            text=text or "",
            finish_reason=choice.get("finish_reason"),
            usage=Usage.from_dict(usage) if usage else None,
            id=str(data.get("id") or ""),
            model=str(data.get("model") or ""),
            raw=data,
        )


@dataclass(frozen=True)
class ModelInfo:
    """One entry of `GET /v1/models`."""

    id: str
    owned_by: str | None = None
    created: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def list_from_openai(cls, data: Any) -> list[ModelInfo]:
        """Parse the `{"object": "list", "data": [...]}` body of `GET /v1/models`."""
        try:
            return [
                cls(id=str(item["id"]), owned_by=item.get("owned_by"), created=item.get("created"), raw=item)
                for item in data["data"]
            ]
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidResponseError(f"not an OpenAI model list: {data!r}") from exc
