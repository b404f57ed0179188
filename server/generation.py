"""What the HTTP layer hands the engine (GenerationRequest) and what comes back on each request's queue (events).

A request has one or more prompts, each with `n` choices; choice index = prompt_index * n + i. Every choice
ends with exactly one ChoiceDelta whose finish_reason is set, unless the request fails (RequestError) or is
cancelled (nothing more is sent).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tnn.model.sampling import SamplingParams

FinishReason = str  # "stop" (eos or stop string), "length", "abort", "error"


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompts: list[list[int]]  # token ids per prompt, each non-empty
    sampling: SamplingParams  # its seed is choice 0's; choice i uses seed + i
    max_tokens: int  # per choice; 0 only with prompt logprobs (scoring)
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()  # end the choice (their text is not part of it), even with ignore_eos
    eos_token_ids: frozenset[int] = frozenset()  # end the choice unless ignore_eos
    ignore_eos: bool = False
    grammar: str | None = None  # llguidance grammar constraining every choice (tnn.server.structured)
    logprobs: int | None = None  # top alternatives per generated token; None: no logprobs
    prompt_logprobs: int | None = None  # same for prompt tokens (echo); None: none
    arrival: float = 0.0  # time.monotonic() when the HTTP request arrived
    # prefix-state cache: look up and store this request's states (False: the caller opted out)
    cache_prompt: bool = True
    cache_boundaries: tuple[int, ...] = ()  # prompt positions worth a stored state (a chat's system prompt end)
    # chat: answer text -> the tokens the conversation's next turn starts with (its state is stored at the end)
    continuation: Callable[[str], list[int]] | None = None

    @property
    def n_sequences(self) -> int:
        return len(self.prompts) * self.n


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the most likely tokens, best first


@dataclass(frozen=True)
class ChoiceDelta:
    index: int
    text: str
    tokens: list[int]
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    stop_reason: str | None = None
    text_offset: int = 0  # characters of this choice's text before `text`


@dataclass(frozen=True)
class PromptLogprobs:
    """Logprobs of a prompt's tokens (the first has none): echo with logprobs."""

    prompt_index: int
    entries: list[TokenLogprob | None]


@dataclass(frozen=True)
class CachedPrompt:
    """How many leading tokens of a prompt came from the prefix-state cache (sent at admission on a hit)."""

    prompt_index: int
    tokens: int


@dataclass(frozen=True)
class RequestError:
    message: str
    status: int = 500
    code: str = "generation_error"


Event = ChoiceDelta | PromptLogprobs | CachedPrompt | RequestError


def coalesce_deltas(events: list[Event]) -> list[Event]:
    """Consecutive unfinished deltas of one choice merged into one (text, tokens and logprobs concatenated): a
    stream that fell behind the engine sends one chunk for the tokens that piled up, not one chunk per token.
    A finishing delta stays its own event (clients see the finish as before)."""
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if (
            isinstance(event, ChoiceDelta)
            and isinstance(last, ChoiceDelta)
            and last.index == event.index
            and last.finish_reason is None
            and event.finish_reason is None
        ):
            merged[-1] = ChoiceDelta(
                index=last.index,
                text=last.text + event.text,
                tokens=last.tokens + event.tokens,
                logprobs=last.logprobs + event.logprobs,
                text_offset=last.text_offset,
            )
        else:
            merged.append(event)
    return merged


class RequestHandle:
    """The HTTP side of a submitted request: an asyncio queue the engine feeds, and a cancel switch."""

    def __init__(self, request: GenerationRequest, on_cancel: Callable[[], None]) -> None:
        self.request = request
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._on_cancel = on_cancel
        self._open_choices = request.n_sequences
        self.done = False  # every choice finished, or the request failed (seen by the event loop)
        self.cancel_reason: FinishReason = "abort"  # what the engine counts the cancelled choices as

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self, reason: FinishReason = "abort") -> None:
        """Stop generating: the engine frees the slots at its next iteration. `reason` is what the unfinished
        choices count as: "abort" (the client went away) or "error" (the server gave up: timeout, shutdown).
        The first call decides."""
        if not self.done and not self._cancelled.is_set():
            self.cancel_reason = reason
            self._cancelled.set()
            self._on_cancel()

    async def next_event(self, timeout: float) -> Event | None:
        """The next event, or None after `timeout` seconds without one."""
        try:
            async with asyncio.timeout(timeout):  # a timer, not wait_for's extra task per token
                event = await self.queue.get()
        except TimeoutError:
            return None
        return self._seen(event)

    async def next_events(self, timeout: float) -> list[Event]:
        """The next event and every other one already queued (one write for several tokens under load)."""
        if self.queue.empty():  # only then pay for the timer
            first = await self.next_event(timeout)
            if first is None:
                return []
            events = [first]
        else:
            events = [self._seen(self.queue.get_nowait())]
        while not self.done and not self.queue.empty():
            events.append(self._seen(self.queue.get_nowait()))
        return events

    def _seen(self, event: Event) -> Event:
        if isinstance(event, RequestError):
            self.done = True
        elif isinstance(event, ChoiceDelta) and event.finish_reason is not None:
            self._open_choices -= 1
            self.done = self._open_choices == 0
        return event
