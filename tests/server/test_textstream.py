"""Incremental detokenization (complete UTF-8 only) and stop strings with hold-back."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest

from tnn.server.textstream import TextStream, find_stop, partial_stop_length
from tnn.server.tokenizer import ServerTokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> ServerTokenizer:
    return ServerTokenizer(tiny_model_dir)


def byte_tokens(tokenizer: ServerTokenizer, text: str) -> list[int]:
    """One token per UTF-8 byte (byte-level BPE has all 256 bytes as tokens): the worst case for streaming."""
    vocab = tokenizer.hf.get_vocab()
    byte_to_char = {b: c for b, c in enumerate(_bytes_to_unicode())}
    return [vocab[byte_to_char[b]] for b in text.encode()]


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (what ByteLevel uses)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def test_detokenizer_never_splits_a_character(tokenizer: ServerTokenizer) -> None:
    text = "héllo 日本 🙂!"
    detokenizer = tokenizer.detokenizer()
    deltas = [detokenizer.add(t) for t in byte_tokens(tokenizer, text)]
    deltas.append(detokenizer.flush())
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas  # bytes inside a character were held back


def test_detokenizer_matches_full_decode_on_real_tokens(tokenizer: ServerTokenizer) -> None:
    text = "Café, naïve — 日本語のテキスト 🚀 and more"
    ids = tokenizer.encode(text, add_bos=True)  # the bos (a special token) is not text
    detokenizer = tokenizer.detokenizer()
    deltas = [detokenizer.add(t) for t in ids]
    assert "".join(deltas) + detokenizer.flush() == tokenizer.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)


def test_detokenizer_matches_full_decode_on_every_prefix_of_random_tokens(tokenizer: ServerTokenizer) -> None:
    """The slow twin: after each token, text out so far + flush == decode of all tokens so far (random ids hit
    partial characters often)."""
    rng = random.Random(0)
    ids = [rng.randrange(tokenizer.vocab_size) for _ in range(400)]
    detokenizer = tokenizer.detokenizer()
    out = ""
    for n, token in enumerate(ids, 1):
        out += detokenizer.add(token)
        held = copy.deepcopy(detokenizer)
        assert out + held.flush() == tokenizer.decode(ids[:n]), n


def test_flush_releases_a_truncated_character(tokenizer: ServerTokenizer) -> None:
    detokenizer = tokenizer.detokenizer()
    first_byte_of_emoji = byte_tokens(tokenizer, "🙂")[:1]
    assert detokenizer.add(first_byte_of_emoji[0]) == ""
    assert detokenizer.flush() == "\ufffd"


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("hello wor", ["world"], 3),
        ("hello", ["world"], 0),
        ("abc", ["c"], 0),
        ("xab", ["abc", "bx"], 2),
        ("", ["ab"], 0),
    ],
)
def test_partial_stop_length(text: str, stops: list[str], expected: int) -> None:
    assert partial_stop_length(text, stops) == expected


def test_find_stop_earliest_and_across_the_boundary() -> None:
    assert find_stop("one two three", ["three", "two"], start=0) == (4, "two")
    assert find_stop("abcdef", ["cd"], start=3) == (2, "cd")  # starts in old text, ends in new
    assert find_stop("abcdef", ["ab"], start=3) is None  # entirely in old text: already checked


class PieceDetokenizer:
    """A detokenizer where token i is the text pieces[i] (always complete)."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def add(self, token: int) -> str:
        return self.pieces[token]

    def flush(self) -> str:
        return ""


def test_text_stream_holds_back_partial_stop_then_cuts() -> None:
    stream = TextStream(PieceDetokenizer(["Hel", "lo ", "wo", "rld!"]), stops=["world"])
    emitted = []
    for token in range(4):
        stopped = stream.add(token)
        emitted.append(stream.take(final=stopped))
        if stopped:
            break
    assert stopped and stream.stop_reason == "world"
    assert emitted == ["Hel", "lo ", "", ""]  # "wo" could start "world": held back, then cut
    assert stream.text == "Hello "


def test_text_stream_releases_held_text_when_no_stop_follows() -> None:
    stream = TextStream(PieceDetokenizer(["ab", "c", "x"]), stops=["cd"])
    assert not stream.add(0)
    assert stream.take(final=False) == "ab"
    assert not stream.add(1)
    assert stream.take(final=False) == ""  # "c" may start "cd"
    assert not stream.add(2)
    assert stream.take(final=False) == "cx"
    stream.finish()
    assert stream.take(final=True) == ""
