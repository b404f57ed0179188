"""API key (constant-time Bearer check on everything but /health, /ready, /metrics), CORS and the request
timeout (504, or an error event then [DONE] once streaming began), on one server configured by TNN_* variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    "header", [None, "Bearer wrong", KEY, f"Bearer {KEY.lower()}", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer", ""]
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


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_the_scheme_is_case_insensitive(secured: ServerProcess, scheme: str) -> None:
    """RFC 7235: the auth scheme is a case-insensitive token; the key itself is compared exactly."""
    response = httpx.get(secured.url + "/v1/models", headers={"Authorization": f"{scheme} {KEY}"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("second", [f"Bearer {KEY}", "Bearer wrong"])
def test_two_authorization_headers_are_refused(secured: ServerProcess, second: str) -> None:
    """Duplicates are rejected (never first- or last-wins: a proxy that appends its own header must not decide)."""
    headers = [("Authorization", f"Bearer {KEY}"), ("Authorization", second)]
    response = httpx.get(secured.url + "/v1/models", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "duplicate_authorization"


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
    before = scrape_metrics(secured.url)
    response = httpx.post(secured.url + "/v1/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 504 and response.json()["error"]["code"] == "request_timeout"
    with httpx.stream("POST", secured.url + "/v1/completions", json={**body, "stream": True}, headers=headers,
                      timeout=30) as stream:  # fmt: skip
        assert stream.status_code == 200
        lines = [line for line in stream.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][len("data: ") :])["error"]["code"] == "request_timeout"
    assert len(lines) > 3  # tokens were streamed before the error
    after = wait_idle(secured.url)
    assert metric_value(after, "tnn_state_slots_used") == 0  # cancelled, slot freed
    counted = {reason: metric_value(after, "tnn_requests_total", finish_reason=reason)
               - metric_value(before, "tnn_requests_total", finish_reason=reason) for reason in ("error", "abort")}  # fmt: skip
    assert counted == {"error": 2, "abort": 0}  # a timeout is the server's failure, not the client's cancel


def serve_exit(model_dir: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tnn.cli.main", "serve", str(model_dir), "--port", "0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **env})


@pytest.mark.parametrize(("args", "env"), [(["--api-key", ""], {}), ([], {"TNN_API_KEY": ""}),
                                           (["--api-key", "   "], {})])  # fmt: skip
def test_an_empty_api_key_refuses_to_start(tiny_model_dir: Path, args: list[str], env: dict[str, str]) -> None:
    result = serve_exit(tiny_model_dir, args, env)
    assert result.returncode == 2, result.stderr
    assert "api_key" in result.stderr and "--no-auth" in result.stderr


@pytest.mark.parametrize(("args", "env", "says"), [(["--no-auth"], {"TNN_API_KEY": KEY}, "--no-auth contradicts"),
                                                   (["--auth"], {}, "--auth (TNN_AUTH=true) needs an api_key")])  # fmt: skip
def test_contradictory_auth_settings_refuse_to_start(
    tiny_model_dir: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    result = serve_exit(tiny_model_dir, args, env)
    assert result.returncode == 2 and says in result.stderr


def test_explicit_no_auth_serves_openly_and_says_so(tiny_model_dir: Path) -> None:
    with ServerProcess(tiny_model_dir, args=["--no-auth"], env={"TNN_API_KEY": ""}) as server:
        assert httpx.get(server.url + "/v1/models").status_code == 200
    assert "authentication is off" in server.log()


def test_the_auth_mode_is_logged(secured: ServerProcess) -> None:
    assert "authentication is on" in secured.log() and KEY not in secured.log()


@pytest.mark.parametrize("header", [f"bearer {KEY}", f"Bearer  {KEY}", f"BEARER {KEY}"])
@pytest.mark.parametrize(("method", "path"), [("POST", "/admin/reset_prefix_cache"), ("GET", "/v1/models")])
def test_admin_and_api_routes_read_the_bearer_header_alike(
    secured: ServerProcess, header: str, method: str, path: str
) -> None:
    response = httpx.request(method, secured.url + path, headers={"Authorization": header})
    assert response.status_code == 200, response.text


def test_admin_routes_refuse_two_authorization_headers(secured: ServerProcess) -> None:
    headers = [("Authorization", f"Bearer {KEY}"), ("Authorization", f"Bearer {KEY}")]
    response = httpx.post(secured.url + "/admin/reset_prefix_cache", headers=headers)
    assert response.status_code == 400 and response.json()["error"]["code"] == "duplicate_authorization"


def test_keys_from_a_secret_file_lose_their_surrounding_whitespace(tiny_model_dir: Path) -> None:
    """A trailing newline or a leading space (a secret file written by hand) is not part of the key."""
    env = {"TNN_API_KEY": f" {KEY}\n", "TNN_ADMIN_KEY": "admin-Key\n"}
    with ServerProcess(tiny_model_dir, env=env) as server:
        assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        admin = httpx.post(server.url + "/admin/reset_prefix_cache", headers={"Authorization": "Bearer admin-Key"})
        assert admin.status_code == 200
    assert KEY not in server.log() and "admin-Key" not in server.log()


def test_refused_settings_never_print_a_key(tiny_model_dir: Path) -> None:
    result = serve_exit(tiny_model_dir, ["--no-auth"],
                        {"TNN_API_KEY": KEY, "TNN_ADMIN_KEY": "admin-Key"})  # fmt: skip
    assert result.returncode == 2 and "--no-auth contradicts" in result.stderr + result.stdout
    assert KEY not in result.stderr + result.stdout and "admin-Key" not in result.stderr + result.stdout
