"""Hypothesis strategies for what schemathesis never generates, put in every text field of every endpoint: lone
surrogates, NUL and other control characters, invalid UTF-8 bytes, huge and non-finite numbers, deeply nested
values. Whatever the input, the answer is a 2xx or a 4xx error envelope (never a 5xx, never a hang)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.server.fuzzing import fuzz_settings
from tests.support import ServerProcess

pytestmark = pytest.mark.timeout(600)

FUZZ = fuzz_settings(ci_examples=60)  # per test

# Text with what JSON can carry but UTF-8 cannot (surrogates), NUL, controls, non-characters, RTL marks, emoji.
nasty_text = st.text(
    alphabet=st.one_of(
        st.characters(codec=None),  # every code point, surrogates included
        st.sampled_from(["\x00", "\ud800", "\udfff", "\ufffe", "\uffff", "\u202e", "\U0010ffff", "🙂", "\r", "\x7f"]),
    ),
    max_size=40,
)
huge_numbers = st.one_of(
    st.integers(min_value=-(2**200), max_value=2**200),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**400, 1e308, -1e308, 5e-324]),
)
json_scalars = st.one_of(st.none(), st.booleans(), huge_numbers, nasty_text)
nested = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(nasty_text, inner, max_size=3),
    max_leaves=20,
)  # fmt: skip


def base_bodies() -> dict[str, dict[str, Any]]:
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    return {
        "/v1/completions": {"prompt": "To be", "max_tokens": 1},
        "/v1/chat/completions": chat,
        "/tokenize": {"prompt": "To be"},
        "/detokenize": {"tokens": [1, 2]},
    }


# (endpoint, path of the field in the body): every place a client puts text
TEXT_FIELDS = [
    ("/v1/completions", ("prompt",)), ("/v1/completions", ("prompt", 0)), ("/v1/completions", ("stop",)),
    ("/v1/completions", ("stop", 0)), ("/v1/completions", ("user",)), ("/v1/completions", ("model",)),
    ("/v1/completions", ("suffix",)),
    ("/v1/chat/completions", ("messages", 0, "content")), ("/v1/chat/completions", ("messages", 0, "content", 0, "text")),
    ("/v1/chat/completions", ("messages", 0, "name")), ("/v1/chat/completions", ("messages", 0, "role")),
    ("/v1/chat/completions", ("model",)), ("/v1/chat/completions", ("user",)), ("/v1/chat/completions", ("stop",)),
    ("/tokenize", ("prompt",)), ("/tokenize", ("messages", 0, "content")), ("/tokenize", ("model",)),
    ("/detokenize", ("model",)),
]  # fmt: skip


def put(body: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """`body` with `value` at `path`, creating the lists and objects on the way ("prompt", 0 -> a list prompt)."""
    body = json.loads(json.dumps(body))
    if path[:1] == ("messages",) and "messages" not in body:
        body = {"messages": [{"role": "user", "content": "hi"}]}
    node: Any = body
    for key, following in zip(path[:-1], path[1:], strict=True):
        child = node[key] if isinstance(node, dict) and key in node else None
        if isinstance(following, int) and not isinstance(child, list):
            child = [{"type": "text", "text": "x"}] if key == "content" else [None]
        elif isinstance(following, str) and not isinstance(child, dict):
            child = {"role": "user"} if key == 0 else {}
        node[key] = child
        node = child
    node[path[-1]] = value
    return body


def assert_clean(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/json", response.headers
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@FUZZ
@given(field=st.sampled_from(TEXT_FIELDS), text=nasty_text)
def test_nasty_text_in_every_text_field(http: httpx.Client, field: tuple[str, tuple], text: str) -> None:
    endpoint, path = field
    body = put(base_bodies()[endpoint], path, text)
    # ensure_ascii: a lone surrogate travels as the escape "\ud800", exactly as a hostile client sends it
    assert_clean(http.post(endpoint, content=json.dumps(body).encode(), headers={"content-type": "application/json"}))


@FUZZ
@given(field=st.sampled_from(TEXT_FIELDS), raw=st.binary(min_size=1, max_size=16))
def test_invalid_utf8_bytes_in_every_text_field(http: httpx.Client, field: tuple[str, tuple], raw: bytes) -> None:
    endpoint, path = field
    marker = "@@RAW@@"
    text = json.dumps(put(base_bodies()[endpoint], path, marker)).encode()
    body = text.replace(marker.encode(), raw.replace(b"\\", b"").replace(b'"', b""))
    assert_clean(http.post(endpoint, content=body, headers={"content-type": "application/json"}))


@FUZZ
@given(endpoint=st.sampled_from(sorted(base_bodies())), key=st.sampled_from(
    ["max_tokens", "n", "temperature", "top_p", "top_k", "seed", "logprobs", "prompt", "messages", "tokens",
     "stop", "stream_options", "logit_bias", "best_of", "presence_penalty"]), value=nested)  # fmt: skip
def test_huge_numbers_and_nested_values_anywhere(http: httpx.Client, endpoint: str, key: str, value: Any) -> None:
    body = {**base_bodies()[endpoint], key: value}
    assert_clean(http.post(endpoint, content=json.dumps(body).encode(), headers={"content-type": "application/json"}))


@pytest.mark.parametrize("depth", [100, 10_000, 200_000])
@pytest.mark.parametrize("endpoint", sorted(base_bodies()))
def test_deeply_nested_json_is_refused_cleanly(http: httpx.Client, endpoint: str, depth: int) -> None:
    for opening, closing in (("[", "]"), ('{"a":', "}")):
        body = '{"prompt": ' + opening * depth + "1" + closing * depth + "}"
        assert_clean(http.post(endpoint, content=body.encode(), headers={"content-type": "application/json"}))
