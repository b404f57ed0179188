"""No request starves another, on a real `tnn serve`: a large /v1/embeddings request runs in bounded engine calls
interleaved with decode steps (a stream's largest inter-token gap stays under a quarter of the embeddings
request's time; the old engine ran every call back to back, so the gap was the whole request), and a client that
gives up stops its work within one call."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess, metric_value, scrape_metrics

pytestmark = pytest.mark.timeout(300)

INPUT_TOKENS = 250  # per input: 512 inputs are 128,000 tokens, 63 engine calls of <= 2,048 tokens


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_model_dir, env={"TNN_MAX_TOKENS": "100000", "TNN_REQUEST_TIMEOUT": "240"}) as process:
        yield process


def embeddings_body(inputs: int) -> dict:
    return {"input": [[(7 * i + j) % 300 + 2 for j in range(INPUT_TOKENS)] for i in range(inputs)]}


def stream_token_times(url: str, stop: threading.Event, times: list[float]) -> None:
    """Stream one long completion, recording when each chunk arrives, until `stop` is set."""
    body = {"prompt": "Once", "max_tokens": 100000, "ignore_eos": True, "stream": True, "temperature": 0}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                times.append(time.monotonic())
            if stop.is_set():
                return


def test_a_stream_keeps_flowing_while_a_512_input_embeddings_request_runs(server: ServerProcess) -> None:
    times: list[float] = []
    stop = threading.Event()
    streamer = threading.Thread(target=stream_token_times, args=(server.url, stop, times))
    streamer.start()
    try:
        while len(times) < 20:  # the stream is running
            time.sleep(0.01)
        start = time.monotonic()
        response = httpx.post(server.url + "/v1/embeddings", json=embeddings_body(512), timeout=240)
        end = time.monotonic()
    finally:
        stop.set()
        streamer.join(60)
    assert response.status_code == 200 and len(response.json()["data"]) == 512
    during = [t for t in times if start <= t <= end]
    gaps = [b - a for a, b in zip([start, *during], [*during, end], strict=True)]
    assert len(during) > 10, (len(during), end - start)
    assert max(gaps) < (end - start) / 4, (max(gaps), end - start)


def test_an_abandoned_embeddings_request_stops_within_one_call(server: ServerProcess) -> None:
    """A 2,048-input request (512,000 tokens) whose client gives up after 1 s: the engine cancels the calls not
    yet run (their tokens never counted), and a short completion sent right after is answered at once."""
    before = metric_value(scrape_metrics(server.url), "tnn_prefill_tokens_total", kind="embedding")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/embeddings", json=embeddings_body(2048), timeout=httpx.Timeout(30, read=1.0))
    start = time.monotonic()
    reply = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 4}, timeout=60)
    assert reply.status_code == 200 and time.monotonic() - start < 5
    time.sleep(1.0)  # > DISCONNECT_POLL: the route has seen the disconnect
    settled = metric_value(scrape_metrics(server.url), "tnn_prefill_tokens_total", kind="embedding")
    time.sleep(1.0)
    metrics = scrape_metrics(server.url)
    assert metric_value(metrics, "tnn_prefill_tokens_total", kind="embedding") == settled  # nothing runs any more
    assert settled - before < 2048 * INPUT_TOKENS / 2  # most of it was never computed
    assert metric_value(metrics, "tnn_engine_calls_waiting") == 0
