"""Client disconnects cancel the request (streaming, non-streaming, queued) and free its slot at once;
a full server answers 429 with Retry-After immediately."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.server.conftest import wait_idle
from tests.support import HeldStream, ServerProcess, metric_value

pytestmark = pytest.mark.timeout(180)

LONG = {"prompt": "To be", "max_tokens": 4000, "ignore_eos": True}


def aborted(samples: dict) -> float:
    return metric_value(samples, "tnn_requests_total", finish_reason="abort")


def wait_for(url: str, name: str, value: float, timeout: float = 15.0) -> dict:
    from tests.support import scrape_metrics

    deadline = time.monotonic() + timeout
    while True:
        samples = scrape_metrics(url)
        if metric_value(samples, name) == value or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_disconnect_mid_stream_frees_the_slot(server: ServerProcess) -> None:
    before = wait_idle(server.url)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            assert metric_value(wait_for(server.url, "tnn_state_slots_used", 1), "tnn_state_slots_used") == 1
    after = wait_idle(server.url)
    assert metric_value(after, "tnn_state_slots_used") == 0 and metric_value(after, "tnn_num_requests_running") == 0
    assert aborted(after) - aborted(before) == 1
    generated = metric_value(after, "tnn_generation_tokens_total") - metric_value(before, "tnn_generation_tokens_total")
    assert generated < LONG["max_tokens"]


def test_disconnect_while_waiting_for_a_whole_completion(server: ServerProcess) -> None:
    before = wait_idle(server.url)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=LONG, timeout=httpx.Timeout(30, read=0.5))
    after = wait_idle(server.url)
    assert metric_value(after, "tnn_state_slots_used") == 0 and metric_value(after, "tnn_num_requests_running") == 0
    assert aborted(after) - aborted(before) == 1


def test_queued_request_disconnect_and_429_when_full(small_server: ServerProcess) -> None:
    url = small_server.url
    before = wait_idle(url)
    running = HeldStream(url, {**LONG, "max_tokens": 100000})
    assert running.first.wait(30)
    # the slot is taken: this one waits in the queue, then its client gives up
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json=LONG, timeout=httpx.Timeout(30, read=1.0))
    samples = wait_for(url, "tnn_num_requests_waiting", 0)
    assert metric_value(samples, "tnn_num_requests_running") == 1
    assert aborted(samples) - aborted(before) == 1
    queued = HeldStream(url, LONG)  # fills the one queue place (its first bytes are the response headers only)
    assert metric_value(wait_for(url, "tnn_num_requests_waiting", 1), "tnn_num_requests_waiting") == 1
    start = time.monotonic()
    response = httpx.post(url + "/v1/completions", json=LONG, timeout=30)
    assert time.monotonic() - start < 2.0
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "server_overloaded"
    running.close()  # first: the queued stream then starts, sees its close flag and ends
    queued.close()
    after = wait_idle(url)
    for gauge in ("tnn_num_requests_running", "tnn_num_requests_waiting", "tnn_state_slots_used", "tnn_state_bytes"):
        assert metric_value(after, gauge) == 0, gauge
    assert (
        metric_value(after, "tnn_errors_total", code="429") - metric_value(before, "tnn_errors_total", code="429") == 1
    )
