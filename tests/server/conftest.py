"""Real `tnn serve` processes on 127.0.0.1, one per configuration, shared by the modules that need them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess, metric_value, scrape_metrics

MAX_PROMPT_TOKENS = 256


@pytest.fixture(scope="session")
def server(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    """The default configuration: 32 slots, prompts up to 256 tokens."""
    args = ["--max-prompt-tokens", str(MAX_PROMPT_TOKENS), "--max-tokens", "4096", "--served-model-name", "tiny"]
    with ServerProcess(tiny_model_dir, args=args) as process:
        yield process


@pytest.fixture(scope="session")
def small_server(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    """One state slot and one queue place: the third concurrent request is refused with 429."""
    args = ["--max-num-seqs", "1", "--max-waiting-requests", "1", "--max-tokens", "100000"]
    with ServerProcess(tiny_model_dir, args=args) as process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def wait_idle(url: str, timeout: float = 15.0) -> dict:
    """Wait until no request runs or waits and no slot is used; return the metrics then."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape_metrics(url)
        busy = [
            metric_value(samples, name)
            for name in ("tnn_num_requests_running", "tnn_num_requests_waiting", "tnn_state_slots_used")
        ]
        if not any(busy) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)
