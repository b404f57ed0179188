"""The provisioned Grafana dashboard: its panels cover the issue's list, every query names a metric the
server really exports (read from a running `tnn serve`), and every query parses and runs in Prometheus."""

from __future__ import annotations

import json
import math
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, prometheus_query, require_tool

pytestmark = pytest.mark.deploy

DASHBOARD = json.loads((REPO / "deploy/grafana/dashboards/tnn-serve.json").read_text())
DATASOURCES = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
METRIC_NAME = re.compile(r"\b(?:tnn|process)_[a-z0-9_]+")
# Series that legitimately have no samples after a few successful requests
MAY_BE_EMPTY = {"tnn_errors_total"}


def targets() -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every query of every panel."""
    return [(panel["title"], target["expr"]) for panel in DASHBOARD["panels"] for target in panel["targets"]]


def runnable(expr: str) -> str:
    """expr with Grafana's variables replaced as Grafana would: all instances, a window covering the test."""
    return expr.replace("$__rate_interval", "1h").replace("$instance", ".*").replace("$model_name", ".*")


def panel_exprs(title_word: str) -> str:
    return " ".join(expr for title, expr in targets() if title_word in title)


@pytest.mark.parametrize(
    ("title_word", "histogram"),
    [
        ("first token", "tnn_time_to_first_token_seconds"),
        ("Inter-token", "tnn_inter_token_latency_seconds"),
        ("End-to-end", "tnn_e2e_request_latency_seconds"),
    ],
)
def test_latency_panels_show_p50_p95_p99(title_word: str, histogram: str) -> None:
    exprs = panel_exprs(title_word)
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate({histogram}_bucket" in exprs


def test_panels_cover_throughput_finish_reasons_queue_slots_and_errors() -> None:
    assert "rate(tnn_generation_tokens_total" in panel_exprs("Tokens / s")
    assert "sum by (finish_reason) (rate(tnn_requests_total" in panel_exprs("finish reason")
    running_waiting = panel_exprs("running / waiting")
    assert "tnn_num_requests_running" in running_waiting and "tnn_num_requests_waiting" in running_waiting
    slots = panel_exprs("State slots")
    assert "tnn_state_slots_used" in slots and "tnn_state_slots_total" in slots
    assert "sum by (code) (rate(tnn_errors_total" in panel_exprs("Errors")


def test_tnn_queries_filter_by_model_name_and_process_panels_exist() -> None:
    for title, expr in targets():
        if "tnn_" in expr:
            assert expr.count("tnn_") == expr.count('model_name=~"$model_name"'), title
    assert "process_resident_memory_bytes" in panel_exprs("memory")
    assert "rate(process_cpu_seconds_total" in panel_exprs("CPU")
    names = [variable["name"] for variable in DASHBOARD["templating"]["list"]]
    assert names == ["instance", "model_name"]


def test_layout_ids_and_datasource() -> None:
    (datasource,) = DATASOURCES["datasources"]
    panels = DASHBOARD["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"]
        assert all(target["datasource"]["uid"] == datasource["uid"] for target in panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_promtool_parses_every_query(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": runnable(expr)} for i, (_, expr) in enumerate(targets())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def exported_series(metrics_text: str) -> set[str]:
    """Series names a Prometheus exposition declares (# TYPE lines, so labelled metrics without samples count)."""
    suffixes = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("", "_count", "_sum")}
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name + suffix for suffix in suffixes.get(kind, ("",))}
    return names


@pytest.mark.slow
def test_every_query_names_a_metric_the_server_exports(served: str) -> None:
    with urllib.request.urlopen(f"{served}/metrics", timeout=30) as response:
        exported = exported_series(response.read().decode())
    variable_queries = [variable["definition"] for variable in DASHBOARD["templating"]["list"]]
    for title, expr in [*targets(), *(("$instance", query) for query in variable_queries)]:
        names = set(METRIC_NAME.findall(expr))
        assert names, f"{title}: {expr} names no tnn_ or process_ metric"
        assert names <= exported, f"{title}: {sorted(names - exported)} not exported by the server"


@pytest.mark.slow
def test_every_query_runs_in_prometheus_and_shows_the_requests(scraped: str) -> None:
    for title, expr in targets():
        result = prometheus_query(scraped, runnable(expr))
        if set(METRIC_NAME.findall(expr)) <= MAY_BE_EMPTY:
            continue
        assert result, f"{title}: {expr} returned no series after the scraped requests"
        assert all(math.isfinite(float(series["value"][1])) for series in result), f"{title}: {result}"
