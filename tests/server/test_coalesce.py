"""coalesce_deltas: the tokens that piled up for a stream that fell behind go out as one chunk per choice."""

from __future__ import annotations

from tnn.server.generation import CachedPrompt, ChoiceDelta, RequestError, TokenLogprob, coalesce_deltas


def delta(index: int, text: str, token: int, *, finish: str | None = None, offset: int = 0) -> ChoiceDelta:
    logprob = TokenLogprob(token=token, logprob=-0.5, top=[])
    return ChoiceDelta(index, text, [token], [logprob], finish_reason=finish, text_offset=offset)  # type: ignore[arg-type]


def test_unfinished_deltas_of_a_choice_merge_and_the_finish_stays_apart() -> None:
    events = [
        CachedPrompt(0, 3),
        delta(0, "To", 1, offset=0),
        delta(0, " be", 2, offset=2),
        delta(1, "Or", 3, offset=0),
        delta(1, " not", 4, offset=2),
        delta(1, "", 5, finish="stop", offset=6),
        delta(0, " or", 6, offset=5),
        delta(0, "!", 7, finish="length", offset=8),
    ]
    merged = coalesce_deltas(events)  # type: ignore[arg-type]
    assert [type(e).__name__ for e in merged] == ["CachedPrompt", "ChoiceDelta", "ChoiceDelta", "ChoiceDelta",
                                                  "ChoiceDelta", "ChoiceDelta"]  # fmt: skip
    first, second, finish_1, third, finish_0 = merged[1:]
    assert (first.index, first.text, first.tokens, first.text_offset) == (0, "To be", [1, 2], 0)
    assert [lp.token for lp in first.logprobs] == [1, 2]
    assert (second.index, second.text, second.tokens, second.finish_reason) == (1, "Or not", [3, 4], None)
    assert (finish_1.text, finish_1.finish_reason) == ("", "stop")
    assert (third.text, third.tokens, third.text_offset) == (" or", [6], 5)
    assert (finish_0.text, finish_0.finish_reason) == ("!", "length")
    joined = {i: "".join(e.text for e in merged[1:] if e.index == i) for i in (0, 1)}
    assert joined == {i: "".join(e.text for e in events[1:] if e.index == i) for i in (0, 1)}


def test_errors_and_single_events_pass_through() -> None:
    error = RequestError("boom")
    assert coalesce_deltas([error]) == [error]  # type: ignore[list-item]
    assert coalesce_deltas([]) == []
    one = delta(0, "x", 9)
    assert coalesce_deltas([one]) == [one]
