"""The prefix-state cache through real `tnn serve` processes: a 20-turn chat gives the same tokens, seeded samples
and logprobs with the cache as without it, while every turn after the first prefills only its new user message;
usage reports cached tokens (also streaming, also completions); opt-out; the admin reset; a restart with
--state-cache-dir continues a conversation from disk.

The model is tiny and random but uses the shipped tokenizer and chat template, so the template boundary the
cache stores at is the one real conversations hit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

import tnn.model
from tests.support import ServerProcess, make_tiny_model_dir, metric_value, scrape_metrics
from tnn.model import default_model_dir

pytestmark = pytest.mark.timeout(300)

TURNS = 20
LOGPROB_TOLERANCE = 1e-4  # float32 logits: the cached path sums the same terms in a different order
SYSTEM = "You are a terse assistant who answers questions about plays. " * 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-shipped-tokenizer"), tokenizer_dir=default_model_dir())


@pytest.fixture(scope="module")
def cached(model_dir: Path) -> Iterator[ServerProcess]:
    """Cache on, a state every 64 prompt tokens, an admin key."""
    with ServerProcess(
        model_dir, args=["--state-cache-interval", "64", "--served-model-name", "tiny"], env={"TNN_ADMIN_KEY": "admin"}
    ) as server:
        yield server


@pytest.fixture(scope="module")
def uncached(model_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(model_dir, env={"TNN_STATE_CACHE_MEMORY": "0"}) as server:
        yield server


def chat(url: str, messages: list[dict[str, str]], **body: object) -> dict:
    response = httpx.post(url + "/v1/chat/completions", json={"messages": messages, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def prompt_count(url: str, messages: list[dict[str, str]]) -> int:
    return httpx.post(url + "/tokenize", json={"messages": messages}, timeout=30).json()["count"]


def new_turn_tokens(url: str, messages: list[dict[str, str]]) -> int:
    """Tokens of the prompt from where the last user message starts: what a perfect cache still prefills."""
    a, b = (
        httpx.post(url + "/tokenize", json={"messages": [*messages[:-1], {"role": "user", "content": probe}]},
                   timeout=30).json()["tokens"]
        for probe in ("x", "y")
    )  # fmt: skip
    common = next(i for i, (p, q) in enumerate(zip(a, b, strict=False)) if p != q)
    return prompt_count(url, messages) - common


def question(turn: int) -> str:
    return f"Turn {turn}: who speaks first in act {turn % 5 + 1}, and why does it matter to the plot?"


def test_twenty_turn_chat_is_exact_and_prefills_only_each_new_message(
    cached: ServerProcess, uncached: ServerProcess
) -> None:
    history: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    for turn in range(1, TURNS + 1):
        history.append({"role": "user", "content": question(turn)})
        greedy = {"max_tokens": 12, "temperature": 0, "logprobs": True, "top_logprobs": 3}
        with_cache, without = chat(cached.url, history, **greedy), chat(uncached.url, history, **greedy)
        answer = with_cache["choices"][0]["message"]["content"]
        assert answer == without["choices"][0]["message"]["content"], f"turn {turn}"
        for a, b in zip(with_cache["choices"][0]["logprobs"]["content"], without["choices"][0]["logprobs"]["content"],
                        strict=True):  # fmt: skip
            assert a["token"] == b["token"] and abs(a["logprob"] - b["logprob"]) < LOGPROB_TOLERANCE
            for x, y in zip(a["top_logprobs"], b["top_logprobs"], strict=True):
                assert abs(x["logprob"] - y["logprob"]) < LOGPROB_TOLERANCE
        sampled = {"max_tokens": 8, "temperature": 1.0, "seed": turn}
        assert chat(cached.url, history, **sampled)["choices"] == chat(uncached.url, history, **sampled)["choices"]

        usage = with_cache["usage"]
        assert without["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        if turn > 1:  # everything before the new user message came from the cache
            assert usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"] == new_turn_tokens(
                cached.url, history
            ), f"turn {turn}"
        history.append({"role": "assistant", "content": answer})


def test_hit_counters_equal_the_cached_tokens_reported(cached: ServerProcess) -> None:
    before = scrape_metrics(cached.url)
    history = [{"role": "user", "content": "Name a king."}]
    cached_tokens = prompt_tokens = 0
    for turn in range(3):
        body = chat(cached.url, history, max_tokens=6, temperature=0)
        cached_tokens += body["usage"]["prompt_tokens_details"]["cached_tokens"]
        prompt_tokens += body["usage"]["prompt_tokens"]
        history += [{"role": "assistant", "content": body["choices"][0]["message"]["content"]},
                    {"role": "user", "content": f"And another one, number {turn}?"}]  # fmt: skip
    after = scrape_metrics(cached.url)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert cached_tokens > 0
    assert delta("tnn_prefix_cache_hits_total") == cached_tokens
    assert delta("tnn_prefix_cache_queries_total") == prompt_tokens
    assert delta("tnn_prefill_tokens_total", kind="prompt") == prompt_tokens - cached_tokens
    assert metric_value(after, "tnn_prefix_cache_entries", tier="memory") > 0
    assert metric_value(after, "tnn_prefix_cache_bytes", tier="memory") > 0


def test_streaming_and_completions_report_cached_tokens(cached: ServerProcess) -> None:
    client = OpenAI(base_url=cached.url + "/v1", api_key="unused")
    chat(cached.url, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "First user."}], max_tokens=2)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Another user, streaming."}]
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, stream=True,  # type: ignore[arg-type]
                                            stream_options={"include_usage": True})  # fmt: skip
    usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    assert (
        usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens > 0
    )  # the system prompt

    prompt = [0, *range(100, 160)]
    first = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0)
    assert first.usage is not None
    follow = prompt + [7, 8, 9]
    second = client.completions.create(model="tiny", prompt=follow, max_tokens=5, temperature=0, stream=True,
                                       stream_options={"include_usage": True})  # fmt: skip
    usage = [chunk.usage for chunk in second if chunk.usage is not None][-1]
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == len(prompt)


def test_opt_out_neither_reads_nor_writes_the_cache(cached: ServerProcess) -> None:
    messages = [{"role": "user", "content": "A private question about Lear's daughters, never cached."}]
    before = scrape_metrics(cached.url)
    for _ in range(2):
        body = chat(cached.url, messages, max_tokens=4, temperature=0, cache_prompt=False)
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    after = scrape_metrics(cached.url)
    for name in ("tnn_prefix_cache_queries_total", "tnn_prefix_cache_hits_total"):
        assert metric_value(after, name) == metric_value(before, name)
    assert metric_value(after, "tnn_prefix_cache_entries", tier="memory") == metric_value(
        before, "tnn_prefix_cache_entries", tier="memory"
    )
    assert chat(cached.url, messages, max_tokens=4)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_admin_reset_needs_the_admin_key_and_empties_the_cache(cached: ServerProcess, uncached: ServerProcess) -> None:
    chat(cached.url, [{"role": "user", "content": "Something to cache."}], max_tokens=2)
    url = cached.url + "/admin/reset_prefix_cache"
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, headers={"Authorization": "Bearer wrong"}).json()["error"]["code"] == "invalid_api_key"
    response = httpx.post(url, headers={"Authorization": "Bearer admin"})
    assert response.status_code == 200 and response.json()["memory_entries"] > 0
    assert metric_value(scrape_metrics(cached.url), "tnn_prefix_cache_entries", tier="memory") == 0
    off = httpx.post(uncached.url + "/admin/reset_prefix_cache", headers={"Authorization": "Bearer admin"})
    assert off.status_code == 403 and off.json()["error"]["code"] == "admin_disabled"  # no key configured there


@pytest.mark.slow
def test_small_budget_evicts_and_stays_within_it(model_dir: Path) -> None:
    model = tnn.model.load(model_dir)
    entry = (model if model.is_converted else tnn.model.attach_ssm(model)).state_bytes_per_sequence()  # one entry
    with ServerProcess(model_dir, env={"TNN_STATE_CACHE_MEMORY": str(3 * entry)}) as server:
        for i in range(6):
            chat(server.url, [{"role": "user", "content": f"Question {i} about Hamlet?"}], max_tokens=3)
        samples = scrape_metrics(server.url)
    assert metric_value(samples, "tnn_prefix_cache_entries", tier="memory") == 3
    assert metric_value(samples, "tnn_prefix_cache_bytes", tier="memory") == 3 * entry
    assert metric_value(samples, "tnn_prefix_cache_evictions_total", tier="memory") > 0


@pytest.mark.slow
def test_restart_with_a_state_cache_dir_continues_the_conversation_from_disk(
    model_dir: Path, uncached: ServerProcess, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "states"
    args = ["--state-cache-dir", str(cache_dir)]
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question(1)}]
    with ServerProcess(model_dir, args=args) as server:
        answer = chat(server.url, history, max_tokens=10, temperature=0)["choices"][0]["message"]["content"]
    assert list(cache_dir.glob("*.safetensors")), "shutdown wrote the states"
    (cache_dir / "garbage.safetensors").write_bytes(b"\x00" * 100)  # a corrupt file: skipped with a warning
    history += [{"role": "assistant", "content": answer}, {"role": "user", "content": question(2)}]

    with ServerProcess(model_dir, args=args) as server:
        before = scrape_metrics(server.url)
        assert metric_value(before, "tnn_prefix_cache_entries", tier="disk") >= 2
        body = chat(server.url, history, max_tokens=10, temperature=0)
        after = scrape_metrics(server.url)
        log = server.log()
    reference = chat(uncached.url, history, max_tokens=10, temperature=0)
    new_tokens = new_turn_tokens(uncached.url, history)
    cached_tokens = body["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached_tokens == body["usage"]["prompt_tokens"] - new_tokens  # the first answer's state, from disk
    assert metric_value(after, "tnn_prefix_cache_hits_total") == cached_tokens
    assert body["choices"][0]["message"] == reference["choices"][0]["message"]
    assert "skipping unreadable file" in log and "garbage.safetensors" in log
