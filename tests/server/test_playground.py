"""The playground page over plain HTTP: served at / and /playground with its assets, locked to its own origin by a
Content-Security-Policy, off with --no-playground; /v1/models carries the state bytes per sequence the page shows.
(tests/server/test_playground_browser.py drives the page in a real browser; test_auth.py covers it with a key.)"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import tnn.model
from tests.server.conftest import wait_idle
from tests.support import ServerProcess, metric_value, scrape_metrics
from tnn.cli.main import build_parser
from tnn.server.app import create_app
from tnn.server.cli import settings_from
from tnn.server.routes.playground import PAGE_DIR
from tnn.server.settings import Settings

pytestmark = pytest.mark.timeout(180)

ASSETS = {
    "/playground/assets/playground.js": "text/javascript",
    "/playground/assets/sse.js": "text/javascript",
    "/playground/assets/playground.css": "text/css",
}


@pytest.mark.parametrize("path", ["/", "/playground"])
def test_page_is_served_at_root_and_playground(server: ServerProcess, path: str) -> None:
    response = httpx.get(server.url + path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/playground/assets/playground.js">' in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert "http://" not in response.text and "https://" not in response.text and '="//' not in response.text


@pytest.mark.parametrize(("path", "kind"), sorted(ASSETS.items()))
def test_assets_are_served(server: ServerProcess, path: str, kind: str) -> None:
    response = httpx.get(server.url + path)
    assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
    assert response.content == (PAGE_DIR / path.rsplit("/", 1)[1]).read_bytes()
    assert "http://" not in response.text and "https://" not in response.text


@pytest.mark.parametrize(
    ("argv", "env", "enabled"),
    [([], {}, True), (["--no-playground"], {}, False), ([], {"TNN_PLAYGROUND": "false"}, False),
     (["--playground"], {"TNN_PLAYGROUND": "0"}, True)],
)  # fmt: skip
def test_no_playground_flag_and_variable(
    argv: list[str], env: dict[str, str], enabled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = build_parser("serve").parse_args(["serve", *argv])
    assert settings_from(args).playground is enabled


def test_no_playground_turns_page_and_assets_off() -> None:
    client = TestClient(create_app(Settings(playground=False)))  # no `with`: routing only, no model is loaded
    for path in ["/", "/playground", *ASSETS]:
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "not_found_error"
    assert client.get("/v1/models").status_code == 200
    assert TestClient(create_app(Settings())).get("/playground").status_code == 200


def test_models_card_reports_state_bytes_per_sequence(server: ServerProcess, tiny_model_dir: Path) -> None:
    """The figure the page shows is the model's own, and the state gauge holds exactly that much per running slot."""
    card = httpx.get(server.url + "/v1/models").json()["data"][0]
    expected = tnn.model.load(tiny_model_dir).state_bytes_per_sequence()
    assert card["state_bytes_per_sequence"] == expected > 0
    assert httpx.get(server.url + "/v1/models/tiny").json()["state_bytes_per_sequence"] == expected

    wait_idle(server.url)
    body = {"prompt": "To be", "max_tokens": 4000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # generating: the slot is held
        samples = scrape_metrics(server.url)
    assert metric_value(samples, "tnn_state_slots_used") == 1
    assert metric_value(samples, "tnn_state_bytes") == expected
    assert metric_value(wait_idle(server.url), "tnn_state_bytes") == 0
