"""Startup and shutdown: 503 before the model is ready, conversion on load, refusal without a model,
and SIGTERM draining running requests (bounded by --drain-timeout)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.support import ServerProcess, make_tiny_model_dir
from tnn.server.app import create_app
from tnn.server.settings import Settings

pytestmark = pytest.mark.timeout(180)


def test_not_ready_answers_503_but_health_is_200(tiny_model_dir: Path) -> None:
    app = create_app(Settings(model_dir=tiny_model_dir))
    client = TestClient(app)  # no `with`: the lifespan (loading) never runs, the app stays "loading"
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json() == {"ready": False, "status": "loading"}
    response = client.post("/v1/completions", json={"prompt": "hi"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "service_unavailable_error"


def test_serve_without_a_model_fails_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tnn.cli.main", "serve", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not a model directory" in result.stderr


def stream_lines(url: str, body: dict, out: list[str], started: threading.Event) -> None:
    try:
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=120) as response:
            for line in response.iter_lines():
                started.set()
                if line:
                    out.append(line)
    except httpx.HTTPError as exc:
        out.append(f"error: {exc!r}")
    started.set()


def test_sigterm_drains_running_requests(tiny_model_dir: Path) -> None:
    with ServerProcess(tiny_model_dir, args=["--drain-timeout", "60"]) as server:
        lines: list[str] = []
        started = threading.Event()
        body = {"prompt": "To be", "max_tokens": 1500, "ignore_eos": True, "stream_options": {"include_usage": True}}
        thread = threading.Thread(target=stream_lines, args=(server.url, body, lines, started))
        thread.start()
        assert started.wait(30)
        server.terminate()
        deadline = time.monotonic() + 10
        while (ready := httpx.get(server.url + "/ready", timeout=5)).status_code == 200:
            assert time.monotonic() < deadline, "/ready still 200 after SIGTERM"
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json() == {"ready": False, "status": "draining"}
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200  # alive while draining
        refused = httpx.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 1}, timeout=5)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert thread.is_alive()  # the running request is still streaming
        thread.join(90)
        assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][len("data: ") :])["usage"]["completion_tokens"] == 1500
    assert "draining running requests" in server.log()


def test_drain_is_bounded_and_unconverted_models_convert_on_load(tmp_path: Path) -> None:
    model_dir = make_tiny_model_dir(tmp_path / "raw", converted=False, chat_template=False)
    args = ["--drain-timeout", "1", "--max-tokens", "10000000"]
    with ServerProcess(model_dir, args=args) as server:
        lines: list[str] = []
        started = threading.Event()
        body = {"prompt": "To be", "max_tokens": 10000000, "ignore_eos": True}
        thread = threading.Thread(target=stream_lines, args=(server.url, body, lines, started), daemon=True)
        thread.start()
        assert started.wait(30)
        begin = time.monotonic()
        assert server.stop() in (0, -signal.SIGTERM)
        assert time.monotonic() - begin < 15
    log = server.log()
    assert "is not converted: converting on load with the default method" in log
    assert "has no chat_template" in log
    assert "timeout graceful shutdown exceeded" in log
