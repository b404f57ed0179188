"""The streaming formats' rendered-template path (`_Format.add_sse`) gives byte for byte the SSE text of the
chunk `add` builds, for every delta: plain text deltas take the template, the others (the first one of an echoed
completion, a finish, a stop string, logprobs, tool calls) the full path."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tnn.model.sampling import SamplingParams
from tnn.server.generation import ChoiceDelta, GenerationRequest
from tnn.server.serving import _ChatFormat, _CompletionFormat, _sse

TEXTS = [" the", 'quote " and \\ backslash', "new\nline\ttab", "ünïcödé — ✓ 😀", "\x01control", "", "</s>"]


def serving() -> Any:
    names = {5: "a", 6: "b"}
    tokenizer = SimpleNamespace(token_text=lambda t: names.get(t, "?"), decode=lambda ids: "".join("?" for _ in ids))
    return SimpleNamespace(model_name='model "quoted" ✓', tokenizer=tokenizer)


def request(*, n: int = 2, logprobs: int | None = None) -> GenerationRequest:
    return GenerationRequest(
        request_id="cmpl-1", prompts=[[1, 2]], sampling=SamplingParams(), max_tokens=100, n=n, logprobs=logprobs
    )


def events() -> list[ChoiceDelta]:
    out = [ChoiceDelta(i % 2, text, [5], text_offset=i) for i, text in enumerate(TEXTS * 2) if text]
    out.insert(3, ChoiceDelta(0, "", [6]))  # a token that completed no text yet
    out.append(ChoiceDelta(0, "cut", [5], finish_reason="stop", stop_reason="END"))
    out.append(ChoiceDelta(1, " end", [6], finish_reason="length"))
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda: _CompletionFormat(serving(), request(), None),
        lambda: _CompletionFormat(serving(), request(), ["echoed prompt "]),
        lambda: _CompletionFormat(serving(), request(n=1, logprobs=0), None),
        lambda: _ChatFormat(serving(), request()),
        lambda: _ChatFormat(serving(), request(n=1, logprobs=1)),
    ],
    ids=["completion", "completion-echo", "completion-logprobs", "chat", "chat-logprobs"],
)
def test_streamed_chunks_equal_the_full_rendering(make: Any) -> None:
    fast, full = make(), make()
    full.created = fast.created
    templated = 0
    for event in events():
        if event.index >= len(fast.choices):
            continue
        templated += event.index in fast._templates
        expected = "".join(_sse(chunk) for chunk in full.add(event))
        assert fast.add_sse(event) == expected
    assert [c.text for c in fast.choices] == [c.text for c in full.choices]
    plain = fast.request.logprobs is None
    assert (templated > 0) == plain  # the template served the plain deltas, and only those
