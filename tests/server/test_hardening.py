"""Issue 14's hand-made bad inputs, each row against a real `tnn serve`: never a 5xx for client input, text that
is not valid Unicode named by field, the OpenAPI schema saying what the server does, one log line per 500."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.server.test_api import assert_error
from tests.support import ServerProcess
from tnn.server.app import create_app
from tnn.server.settings import Settings

pytestmark = pytest.mark.timeout(180)

SURROGATE = "\ud800"  # a lone UTF-16 surrogate: valid JSON (`"\ud800"`), not encodable as UTF-8


def post_raw(url: str, path: str, body: str) -> httpx.Response:
    """POST a JSON text as-is: `json.dumps` keeps a lone surrogate as the escape `\\ud800`, as an attacker sends it."""
    return httpx.post(url + path, content=body.encode(), headers={"content-type": "application/json"}, timeout=30)


def test_tokenize_with_no_messages_is_400(server: ServerProcess) -> None:
    response = httpx.post(server.url + "/tokenize", json={"messages": []}, timeout=30)
    assert_error(response, 400, param="messages")


SURROGATE_CASES = [
    ("/tokenize", {"prompt": SURROGATE}, "prompt"),
    ("/tokenize", {"messages": [{"role": "user", "content": SURROGATE}]}, "messages.0.content"),
    ("/tokenize", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a" + SURROGATE}]}]},
     "messages.0.content.0.text"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": SURROGATE}]},
     "messages.1.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": SURROGATE}]}]},
     "messages.0.content.0.text"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "name": SURROGATE}]}, "messages.0.name"),
    ("/v1/completions", {"prompt": ["ok", SURROGATE]}, "prompt.1"),
    ("/v1/completions", {"prompt": SURROGATE}, "prompt"),
    ("/v1/completions", {"prompt": "hi", "stop": [SURROGATE]}, "stop.0"),
    ("/v1/completions", {"prompt": "hi", "user": SURROGATE}, "user"),
    ("/v1/completions", {"prompt": "hi", "model": SURROGATE}, "model"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "param"), SURROGATE_CASES)
def test_lone_surrogates_are_400_naming_the_field(server: ServerProcess, path: str, body: dict, param: str) -> None:
    error = assert_error(post_raw(server.url, path, json.dumps(body)), 400, param=param, code="invalid_text")
    assert param in error["message"]


def test_surrogate_in_a_key_is_400(server: ServerProcess) -> None:
    assert_error(post_raw(server.url, "/v1/completions", json.dumps({"prompt": "x", SURROGATE: 1})), 400)


def test_invalid_utf8_body_is_400(server: ServerProcess) -> None:
    response = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "\xff\xfe"}',
                          headers={"content-type": "application/json"})  # fmt: skip
    assert_error(response, 400)


def test_openapi_documents_400_not_422_and_metrics_as_text(server: ServerProcess) -> None:
    schema = httpx.get(server.url + "/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert "422" not in codes, (method, path)
            if method == "post":
                assert {"400", "413"} <= codes, (method, path)
                error = operation["responses"]["400"]["content"]["application/json"]["schema"]
                envelope = {"$ref": "#/components/schemas/ErrorResponse"}
                if path.startswith("/api/"):  # Ollama's routes: their own {"error": "..."}, or the envelope
                    assert envelope in error["anyOf"], path
                else:
                    assert error == envelope, (method, path)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    metrics = schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert "404" in schema["paths"]["/v1/models/{model}"]["get"]["responses"]
    assert "404" in schema["paths"]["/v1/completions"]["post"]["responses"]  # an unknown model
    assert "503" in schema["paths"]["/ready"]["get"]["responses"]
    stream = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(stream) == {"application/json", "text/event-stream"}
    assert httpx.get(server.url + "/metrics").headers["content-type"].startswith("text/plain")


def test_405_carries_an_allow_header(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/v1/completions")
    assert_error(response, 405)
    assert response.headers["allow"] == "POST"


def test_header_line_of_one_megabyte_is_431_with_the_envelope(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 1_000_000 + b"\r\n\r\n")
        reply = _read_all(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), head
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "headers_too_large"


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:  # the server closed while we were still sending
        pass
    return b"".join(chunks)


def test_every_500_is_logged_once(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A fault inside a route gives the 500 envelope and one traceback; nothing is re-raised to uvicorn (which
    would log it a second time)."""
    app = create_app(Settings(model_dir=tiny_model_dir))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("kaboom")

    with caplog.at_level(logging.ERROR), TestClient(app, raise_server_exceptions=True) as client:
        response = client.get("/boom")
    assert_error(response, 500, code="internal_error")
    assert "kaboom" not in response.text
    logged = [r for r in caplog.records if r.exc_info is not None]
    assert len(logged) == 1 and "GET /boom" in logged[0].getMessage()


@pytest.mark.parametrize("top_p", [5e-324, 1e-46])
def test_an_underflowing_top_p_with_a_grammar_answers_200(server: ServerProcess, top_p: float) -> None:
    """top_p is 0 in float32: the top allowed token survives (no 'the grammar refused token 0')."""
    body = {"prompt": "Pick:", "max_tokens": 5, "temperature": 1.0, "top_p": top_p, "guided_choice": ["0", "0"]}
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == "0"


@pytest.mark.parametrize("penalty", [1e-46, 5e-324])
def test_an_underflowing_repetition_penalty_does_not_end_the_reply(server: ServerProcess, penalty: float) -> None:
    """repetition_penalty underflows to 0 in float32: its limit (the prompt's positive-logit tokens win), not NaN
    logits that fail the row. The tiny model's BOS is its EOS and one of those winners (1 in 6 per token), so EOS
    is ignored: every one of the 8 tokens must be drawn from finite logits."""
    body = {"prompt": "To be or not", "max_tokens": 8, "temperature": 1.0, "seed": 3, "repetition_penalty": penalty,
            "ignore_eos": True}  # fmt: skip
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "length" and response.json()["usage"]["completion_tokens"] == 8
