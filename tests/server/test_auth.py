"""API key (constant-time Bearer check on everything but /health, /ready, /metrics), CORS and the request
timeout (504, or an error event then [DONE] once streaming began), on one server configured by TNN_* variables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.server.conftest import wait_idle
from tests.support import ServerProcess, metric_value, scrape_metrics

pytestmark = pytest.mark.timeout(180)

KEY = "s3cret-Key"
ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def secured(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    env = {"TNN_API_KEY": KEY, "TNN_CORS_ORIGINS": ORIGIN, "TNN_MAX_NUM_SEQS": "4", "TNN_REQUEST_TIMEOUT": "1.5",
           "TNN_MAX_TOKENS": "1000000"}  # fmt: skip
    with ServerProcess(tiny_model_dir, env=env) as process:
        yield process


def test_probes_and_metrics_stay_open(secured: ServerProcess) -> None:
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(secured.url + path).status_code == 200, path


def test_playground_page_loads_without_the_key_but_its_api_calls_need_it(secured: ServerProcess) -> None:
    """The page holds no secret; it asks for the key and sends it with every API call (the browser tests)."""
    for path in ("/", "/playground", "/playground/assets/playground.js", "/playground/assets/sse.js",
                 "/playground/assets/playground.css"):  # fmt: skip
        assert httpx.get(secured.url + path).status_code == 200, path
    for path in ("/playground/", "/playground/assets", "/playground/assets/", "/playground/assets/missing.js",
                 "/playground/assets/../../v1/models", "/playground/x"):  # fmt: skip
        assert httpx.get(secured.url + path).status_code in (401, 404), path
    assert httpx.get(secured.url + "/playground/index.html").status_code == 401


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", KEY, f"Bearer {KEY.lower()}", f"bearer {KEY}", f"Bearer {KEY}x"]
)
@pytest.mark.parametrize("path", ["/v1/models", "/tokenize", "/docs", "/openapi.json"])
def test_missing_or_wrong_key_is_401(secured: ServerProcess, header: str | None, path: str) -> None:
    headers = {} if header is None else {"Authorization": header}
    method = "POST" if path == "/tokenize" else "GET"
    response = httpx.request(method, secured.url + path, headers=headers, json={"prompt": "x"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"


def test_right_key_works_with_openai_and_errors_are_counted(secured: ServerProcess) -> None:
    before = metric_value(scrape_metrics(secured.url), "tnn_errors_total", code="401")
    client = openai.OpenAI(base_url=secured.url + "/v1", api_key=KEY, max_retries=0)
    model = client.models.list().data[0].id
    assert client.completions.create(model=model, prompt="hi", max_tokens=2).usage.completion_tokens >= 1
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=secured.url + "/v1", api_key="nope", max_retries=0).models.list()
    assert metric_value(scrape_metrics(secured.url), "tnn_errors_total", code="401") - before == 1


def test_cors_preflight_for_allowed_origin(secured: ServerProcess) -> None:
    headers = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    response = httpx.options(secured.url + "/v1/completions", headers=headers)
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(secured.url + "/v1/completions", headers={**headers, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_request_timeout_is_504_or_an_error_event_after_streaming_began(secured: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "To be", "max_tokens": 1000000, "ignore_eos": True}
    response = httpx.post(secured.url + "/v1/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 504 and response.json()["error"]["code"] == "request_timeout"
    with httpx.stream("POST", secured.url + "/v1/completions", json={**body, "stream": True}, headers=headers,
                      timeout=30) as stream:  # fmt: skip
        assert stream.status_code == 200
        lines = [line for line in stream.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][len("data: ") :])["error"]["code"] == "request_timeout"
    assert len(lines) > 3  # tokens were streamed before the error
    assert metric_value(wait_idle(secured.url), "tnn_state_slots_used") == 0  # cancelled, slot freed
