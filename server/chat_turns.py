"""Where a chat's next turn continues: the tokens every prompt that follows a conversation with a user message
starts with. The prefix-state cache stores the state there when an answer finishes, so the next turn prefills only
its new message.

The boundary is found, not assumed: the conversation is rendered with two different probe user messages, and their
common token prefix is where any next turn begins, for any chat template and tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

Messages = Sequence[dict[str, Any]]


class ChatTokenizer(Protocol):
    def render_chat(self, messages: list[dict[str, Any]]) -> str: ...

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]: ...


def next_turn_prefix(prompt_of: Callable[[list[dict[str, Any]]], list[int]], messages: Messages) -> list[int]:
    """The tokens every prompt continuing `messages` with a user message starts with; `prompt_of` renders and
    encodes a conversation."""
    a, b = (prompt_of([*messages, {"role": "user", "content": probe}]) for probe in ("a", "b"))
    return a[: common_prefix_length(a, b)]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@dataclass(frozen=True)
class AnsweredTurn:
    """A chat request's `continuation` for the engine: answer text -> the next turn's prefix after the assistant
    answered it ([] when the template refuses that conversation: nothing is stored then). Plain data and a
    tokenizer, called on the engine thread (about a millisecond)."""

    tokenizer: ChatTokenizer
    messages: tuple[dict[str, Any], ...]
    add_bos: bool

    def __call__(self, answer: str) -> list[int]:
        def prompt_of(messages: list[dict[str, Any]]) -> list[int]:
            return self.tokenizer.encode(self.tokenizer.render_chat(messages), add_bos=self.add_bos)

        try:
            return next_turn_prefix(prompt_of, [*self.messages, {"role": "assistant", "content": answer}])
        except Exception as exc:  # a template that refuses the conversation, or no tokenizer at all
            logger.debug("no prefix-cache continuation for this conversation: %s", exc)
            return []
