"""Exact metric counts after a known workload (as vLLM's test_metrics does), and idle gauges."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import wait_idle
from tests.support import ServerProcess, metric_value, scrape_metrics

pytestmark = pytest.mark.timeout(180)

COUNTS = (
    "tnn_time_to_first_token_seconds_count",
    "tnn_e2e_request_latency_seconds_count",
    "tnn_request_queue_time_seconds_count",
    "tnn_request_prefill_time_seconds_count",
    "tnn_inter_token_latency_seconds_count",
    "tnn_decode_step_seconds_count",
    "tnn_batch_size_sum",
    "tnn_prompt_tokens_total",
    "tnn_generation_tokens_total",
)


def test_exact_counts_after_a_known_workload(server: ServerProcess) -> None:
    before = wait_idle(server.url)
    usages = []
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for max_tokens in (1, 4, 8, 16, 5):
            body = {"prompt": "The quick brown fox", "max_tokens": max_tokens, "ignore_eos": True}
            usages.append(http.post("/v1/completions", json=body).json()["usage"])
        for _ in range(3):
            body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "ignore_eos": True,
                    "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                events = [line for line in response.iter_lines() if line.startswith("data: {")]
            usages.append(httpx.Response(200, content=events[-1][len("data: ") :]).json()["usage"])
        assert http.post("/v1/completions", json={"prompt": "x", "top_p": 7}).status_code == 400
    after = wait_idle(server.url)
    delta = {name: metric_value(after, name) - metric_value(before, name) for name in COUNTS}
    requests = len(usages)
    generated = sum(u["completion_tokens"] for u in usages)
    assert generated == 1 + 4 + 8 + 16 + 5 + 3 * 6
    assert delta["tnn_time_to_first_token_seconds_count"] == requests
    assert delta["tnn_e2e_request_latency_seconds_count"] == requests
    assert delta["tnn_request_queue_time_seconds_count"] == requests
    assert delta["tnn_request_prefill_time_seconds_count"] == requests
    assert delta["tnn_generation_tokens_total"] == generated
    assert delta["tnn_prompt_tokens_total"] == sum(u["prompt_tokens"] for u in usages)
    assert delta["tnn_inter_token_latency_seconds_count"] == generated - requests  # one per token after the first
    assert delta["tnn_batch_size_sum"] == generated - requests  # first tokens come from prefill logits
    assert delta["tnn_decode_step_seconds_count"] >= max(u["completion_tokens"] for u in usages) - 1

    def finished(samples: dict, reason: str) -> float:
        return metric_value(samples, "tnn_requests_total", finish_reason=reason)

    assert finished(after, "length") - finished(before, "length") == requests
    assert (
        metric_value(after, "tnn_errors_total", code="400") - metric_value(before, "tnn_errors_total", code="400") == 1
    )
    assert metric_value(after, "tnn_state_slots_total") == 256  # the default cap; 1 GiB holds far more tiny states
    for gauge in ("tnn_num_requests_running", "tnn_num_requests_waiting", "tnn_state_slots_used", "tnn_state_bytes"):
        assert metric_value(after, gauge) == 0, gauge


def test_metrics_are_open_and_prometheus_formatted(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    for name in ("tnn_time_to_first_token_seconds_bucket", "tnn_errors_total", "tnn_state_bytes", "tnn_batch_size"):
        assert name in response.text
    assert "_created" not in response.text


def test_every_tnn_series_has_the_model_name_and_process_metrics_are_there(server: ServerProcess) -> None:
    model = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    samples = scrape_metrics(server.url)
    tnn_series = [(name, dict(labels)) for name, labels in samples if name.startswith("tnn_")]
    assert len(tnn_series) > 20
    assert all(labels.get("model_name") == model for _, labels in tnn_series), tnn_series
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        assert metric_value(samples, name) > 0, name


def test_n_choices_share_one_prefill(server: ServerProcess) -> None:
    before = wait_idle(server.url)
    body = {"prompt": "The quick brown fox", "max_tokens": 5, "n": 3, "ignore_eos": True}
    usage = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()["usage"]
    after = wait_idle(server.url)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("tnn_prompt_tokens_total") == usage["prompt_tokens"]  # prefilled once, not three times
    assert delta("tnn_request_prefill_time_seconds_count") == 1
    assert delta("tnn_time_to_first_token_seconds_count") == 1
    assert delta("tnn_requests_total", finish_reason="length") == 3  # one per choice
    assert delta("tnn_generation_tokens_total") == usage["completion_tokens"] == 15
