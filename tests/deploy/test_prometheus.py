"""Prometheus: the repo's scrape config passes promtool, and a real Prometheus scrapes a real `tnn serve`."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from .conftest import REPO, SCRAPED_REQUESTS, prometheus_query, require_tool

CONFIG = REPO / "deploy/prometheus/prometheus.yml"


@pytest.mark.deploy
def test_promtool_checks_the_config() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "config", str(CONFIG)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.deploy
def test_scrapes_the_compose_server_every_5s() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert config["global"]["scrape_interval"] == "5s" and "scrape_interval" not in job
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["tnn:8000"]}]  # the compose service and its port


@pytest.mark.deploy
@pytest.mark.slow
def test_prometheus_api_returns_the_server_latency_histograms(scraped: str) -> None:
    (ttft,) = prometheus_query(scraped, "sum(tnn_time_to_first_token_seconds_count)")
    assert float(ttft["value"][1]) >= SCRAPED_REQUESTS
    (e2e,) = prometheus_query(scraped, "sum(tnn_e2e_request_latency_seconds_count)")
    assert float(e2e["value"][1]) >= SCRAPED_REQUESTS
    (generated,) = prometheus_query(scraped, "sum(tnn_generation_tokens_total)")
    assert float(generated["value"][1]) >= SCRAPED_REQUESTS  # at least one token per request
