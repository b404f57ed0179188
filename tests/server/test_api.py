"""HTTP API shapes and every error path, against a real `tnn serve` process (httpx)."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import MAX_PROMPT_TOKENS
from tests.support import ServerProcess

pytestmark = pytest.mark.timeout(180)


def complete(client: httpx.Client, **body: object) -> dict:
    response = client.post("/v1/completions", json={"prompt": "To be", "max_tokens": 5, **body})
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, *, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def test_health_ready_models(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True, "status": "ready"}
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert models["data"][0]["max_model_len"] == MAX_PROMPT_TOKENS
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert_error(client.get("/v1/models/other"), 404, code="model_not_found")


def test_completion_shape_and_usage(client: httpx.Client) -> None:
    body = complete(client, max_tokens=7, ignore_eos=True, seed=3)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "tiny"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
    prompt_tokens = client.post("/tokenize", json={"prompt": "To be"}).json()["count"]
    cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]  # the prefix-state cache (test_prefix_cache)
    assert 0 <= cached < prompt_tokens
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 7, "total_tokens": prompt_tokens + 7,
                             "prompt_tokens_details": {"cached_tokens": cached}}  # fmt: skip


def test_token_id_prompts_and_batches_of_prompts(client: httpx.Client) -> None:
    ids = client.post("/tokenize", json={"prompt": "To be"}).json()["tokens"]
    by_text = complete(client, prompt="To be", seed=5, ignore_eos=True)
    by_ids = complete(client, prompt=ids, seed=5, ignore_eos=True)
    assert by_text["choices"][0]["text"] == by_ids["choices"][0]["text"]
    batch = complete(client, prompt=["To be", "or not"], n=2, seed=5, ignore_eos=True)
    assert [c["index"] for c in batch["choices"]] == [0, 1, 2, 3]
    assert batch["choices"][0]["text"] == by_text["choices"][0]["text"]  # choice 0 of prompt 0 uses the seed itself
    assert batch["usage"]["completion_tokens"] == 20


def test_n_shares_prefill_and_seeds_differ_per_choice(client: httpx.Client) -> None:
    body = complete(client, n=3, seed=11, max_tokens=12, ignore_eos=True)
    texts = [c["text"] for c in body["choices"]]
    assert len(set(texts)) == 3
    assert body["usage"]["completion_tokens"] == 36
    assert body["usage"]["prompt_tokens"] == client.post("/tokenize", json={"prompt": "To be"}).json()["count"]
    again = complete(client, n=3, seed=11, max_tokens=12, ignore_eos=True)
    assert [c["text"] for c in again["choices"]] == texts


def test_greedy_is_deterministic(client: httpx.Client) -> None:
    first = complete(client, temperature=0, max_tokens=10)
    second = complete(client, temperature=0, max_tokens=10)
    assert first["choices"][0]["text"] == second["choices"][0]["text"]


def test_echo_and_logprobs(client: httpx.Client) -> None:
    body = complete(client, echo=True, logprobs=3, max_tokens=4, seed=1, ignore_eos=True)
    choice = body["choices"][0]
    assert choice["text"].startswith("To be")
    logprobs = choice["logprobs"]
    n_prompt = body["usage"]["prompt_tokens"]
    assert len(logprobs["tokens"]) == n_prompt + 4
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert all(lp <= 0 for lp in logprobs["token_logprobs"][1:])
    # 3 top tokens plus the sampled one; byte tokens that are not whole UTF-8 all read "\ufffd" and share a key
    assert all(3 <= len(top) <= 4 or "\ufffd" in top for top in logprobs["top_logprobs"][1:])
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"])


def test_echo_with_zero_max_tokens_scores_the_prompt(client: httpx.Client) -> None:
    body = complete(client, echo=True, logprobs=0, max_tokens=0)
    choice = body["choices"][0]
    assert choice["text"] == "To be" and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0
    assert len(choice["logprobs"]["token_logprobs"]) == body["usage"]["prompt_tokens"]


def test_logprobs_match_the_sampled_tokens(client: httpx.Client) -> None:
    body = complete(client, logprobs=2, max_tokens=6, temperature=0, ignore_eos=True)
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == 6
    for token, lp, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert top[token] == pytest.approx(lp)
        assert lp == pytest.approx(max(top.values()))  # greedy picks the most likely token


def test_stop_string_cuts_the_text(client: httpx.Client) -> None:
    full = complete(client, seed=21, max_tokens=40, ignore_eos=True)["choices"][0]["text"]
    stop = full[10:13]
    assert len(stop.strip()) > 0
    body = complete(client, seed=21, max_tokens=40, ignore_eos=True, stop=[stop, "NEVER"])
    choice = body["choices"][0]
    assert choice["text"] == full[: full.index(stop)]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop


def test_chat_completion_shape(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "logprobs": True, "top_logprobs": 2},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    content = choice["logprobs"]["content"]
    assert 1 <= len(content) <= 5 and all(len(entry["top_logprobs"]) == 2 for entry in content)
    rendered = client.post("/tokenize", json={"messages": [{"role": "user", "content": "Hello"}]}).json()
    assert body["usage"]["prompt_tokens"] == rendered["count"]
    assert "User:" in "".join(rendered["token_strs"]).replace("Ġ", " ")


def test_tokenize_detokenize_round_trip(client: httpx.Client) -> None:
    text = "Café 日本 🙂"
    tokens = client.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert tokens["count"] == len(tokens["tokens"]) == len(tokens["token_strs"])
    assert client.post("/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": text}
    with_bos = client.post("/tokenize", json={"prompt": text}).json()
    assert with_bos["tokens"] == [0, *tokens["tokens"]]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": 3}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"n": 0}, "n"),
        ({"n": 5}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 5000}, "max_tokens"),
        ({"logprobs": 21}, "logprobs"),
        ({"seed": 2**64}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["x" * 65]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": [1, -1]}, "prompt"),
        ({"prompt": [10**6]}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"model": "gpt-4"}, "model"),
    ],
)
def test_invalid_completion_requests_are_400_with_param(client: httpx.Client, body: dict, param: str) -> None:
    response = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, **body})
    expected = 404 if param == "model" else 400
    assert_error(response, expected, param=param)


def test_nan_and_infinity_are_rejected(client: httpx.Client) -> None:
    for value in ("NaN", "Infinity", "-Infinity"):
        content = '{"prompt": "hi", "temperature": ' + value + "}"
        response = client.post("/v1/completions", content=content, headers={"content-type": "application/json"})
        assert_error(response, 400, param="temperature")


def test_malformed_json_and_missing_fields(client: httpx.Client) -> None:
    response = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(response, 400, code="invalid_json")
    assert_error(client.post("/v1/completions", json={"max_tokens": 3}), 400, param="prompt")
    assert_error(client.post("/v1/chat/completions", json={"messages": []}), 400, param="messages")
    assert_error(client.post("/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]}), 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 30}, "top_logprobs"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_invalid_chat_requests_are_400(client: httpx.Client, body: dict, param: str) -> None:
    response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], **body})
    assert_error(response, 400, param=param)


def test_too_long_prompt_is_400_with_token_counts(client: httpx.Client) -> None:
    prompt = list(range(5, 5 + MAX_PROMPT_TOKENS + 1))
    error = assert_error(
        client.post("/v1/completions", json={"prompt": prompt}), 400, param="prompt", code="context_length_exceeded"
    )
    assert str(MAX_PROMPT_TOKENS) in error["message"] and str(MAX_PROMPT_TOKENS + 1) in error["message"]
    long_chat = {"messages": [{"role": "user", "content": "word " * 2000}]}
    assert_error(client.post("/v1/chat/completions", json=long_chat), 400, code="context_length_exceeded")


def test_unknown_route_method_and_huge_body(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/completions"), 405)
    assert_error(client.post("/v1/completions", json={"prompt": "x" * 2_100_000}), 413, code="payload_too_large")


def test_oversized_headers_are_refused(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        try:
            response = http.get("/health", headers={"x-junk": "a" * 70_000})
        except httpx.HTTPError:
            return  # the connection was closed: also a refusal
        assert_error(response, 431, code="headers_too_large")
        assert_error(http.get("/health", headers={f"x-h{i}": "1" for i in range(150)}), 431)


def test_tokenize_errors(client: httpx.Client) -> None:
    assert_error(client.post("/tokenize", json={}), 400, param="prompt")
    assert_error(client.post("/detokenize", json={"tokens": [10**7]}), 400, param="tokens")
    assert_error(client.post("/detokenize", json={"tokens": [-1]}), 400, param="tokens.0")


WRONG_VALUES = ["text", "", [], [1, "a"], {}, {"a": 1}, None, True, -1, 0, 2**70, -(2**70), 1e308, 0.5]
COMPLETION_FIELDS = ["prompt", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty",
                     "frequency_penalty", "n", "stop", "seed", "stream", "stream_options", "logprobs", "echo",
                     "ignore_eos", "logit_bias", "suffix", "best_of", "model", "user"]  # fmt: skip
CHAT_FIELDS = ["messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "response_format"]


@pytest.mark.parametrize("field", COMPLETION_FIELDS)
def test_no_value_of_the_wrong_type_gives_a_server_error(client: httpx.Client, field: str) -> None:
    """A small fuzz (what schemathesis found in vLLM): any value in any field is a 2xx or a 4xx envelope."""
    for value in WRONG_VALUES:
        body = {"prompt": "hi", "max_tokens": 2, field: value}
        response = client.post("/v1/completions", json=body)
        assert response.status_code < 500, (field, value, response.text)
        if response.status_code >= 400:
            assert_error(response, response.status_code)


@pytest.mark.parametrize("field", CHAT_FIELDS)
def test_no_chat_value_of_the_wrong_type_gives_a_server_error(client: httpx.Client, field: str) -> None:
    for value in [*WRONG_VALUES, [{"role": "user"}], [{"role": "user", "content": [{"type": "image_url"}]}]]:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, field: value}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code < 500, (field, value, response.text)
