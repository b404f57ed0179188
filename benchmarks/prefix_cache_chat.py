"""Multi-turn chat against real `tnn serve` processes, prefix-state cache on vs off, in the same run.

    .venv/bin/python benchmarks/prefix_cache_chat.py                 # the shipped model (converted on load)
    .venv/bin/python benchmarks/prefix_cache_chat.py --quick         # fewer turns/users: a smoke run

Two servers of the same model run side by side: one with the cache (default settings), one with
TNN_STATE_CACHE_MEMORY=0. Every turn goes to both, alternating which goes first; the cached server generates the
answer (streaming, greedy, `--answer-tokens` tokens, ignore_eos) that both histories then contain, the uncached one
only its first token (TTFT does not depend on how many tokens follow). TTFT = request sent to the first streamed
content. Scenarios:
- chat: one conversation of `--turns` turns, each a ~50-token user message and a ~100-token answer, repeated
  `--repeats` times (median per turn);
- shared system prompt: `--users` users, each a conversation of `--shared-turns` turns after the same
  ~1,000-token system prompt (median over users per turn), all users at once (`--arrival together`) or the
  first user's first turn alone before the others (`--arrival first-alone`: the system prompt is then known, as
  on a server that has seen it before);
- restart: a server with --state-cache-dir answers a few turns, is stopped and started again, and the next turn
  is served from the states it wrote to disk (hit counter and TTFT against a cold server).
Prefill tokens come from each server's tnn_prefill_tokens_total; memory per entry and entries under the default
budget from the cached server's /metrics and log. Writes benchmarks/results/prefix_cache_chat.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support (ServerProcess, metrics)

from tests.support import ServerProcess, metric_value, scrape_metrics  # noqa: E402
from tnn.model import default_model_dir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = (
    "the king hath sent for thee and all his lords attend upon the queen within the castle walls while "
    "thunder rolls above the heath where three strange sisters wait to greet the thane with prophecies of "
    "crowns and daggers seen in air and blood that will not wash away from hands that once were clean"
).split()


def text_of(tokens: int, seed: int, url: str) -> str:
    """A deterministic text of about `tokens` tokens (counted by the server's tokenizer)."""
    words: list[str] = []
    i = seed
    while True:
        words.append(WORDS[(i * 7 + seed) % len(WORDS)])
        i += 1
        if len(words) % 8 == 0:
            count = httpx.post(url + "/tokenize", json={"prompt": " ".join(words), "add_special_tokens": False},
                               timeout=30).json()["count"]  # fmt: skip
            if count >= tokens:
                return " ".join(words).capitalize() + "."


async def ask(client: httpx.AsyncClient, url: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    """One streamed chat turn: TTFT, the answer text and the usage."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    ttft = None
    answer = ""
    usage: dict[str, Any] = {}
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk["choices"]:
                if choice["delta"].get("content") or choice.get("finish_reason"):
                    ttft = ttft or time.perf_counter() - start
                    answer += choice["delta"].get("content") or ""
    return {"ttft": ttft, "answer": answer, "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]}  # fmt: skip


async def conversation(
    client: httpx.AsyncClient,
    on: str,
    off: str,
    messages: list[dict[str, str]],
    questions: list[str],
    answer: int,
    *,
    wait: asyncio.Event | None = None,
    first_done: asyncio.Event | None = None,
) -> list[dict[str, Any]]:
    """Ask `questions` in turn on both servers (alternating which goes first); the cached server's answers form
    the history. Per turn: TTFT on and off, prompt and cached tokens. `wait`: start once it is set; `first_done`:
    set after the first turn."""
    if wait is not None:
        await wait.wait()
    turns = []
    history = list(messages)
    for i, question in enumerate(questions):
        history.append({"role": "user", "content": question})
        if i % 2 == 0:
            cached = await ask(client, on, history, answer)
            plain = await ask(client, off, history, 1)
        else:
            plain = await ask(client, off, history, 1)
            cached = await ask(client, on, history, answer)
        history.append({"role": "assistant", "content": cached["answer"]})
        turns.append({"ttft_on": cached["ttft"], "ttft_off": plain["ttft"], "prompt_tokens": cached["prompt_tokens"],
                      "cached_tokens": cached["cached_tokens"]})  # fmt: skip
        if first_done is not None:
            first_done.set()
    return turns


def counters(url: str) -> dict[str, float]:
    s = scrape_metrics(url)
    return {
        "prefill_prompt": metric_value(s, "tnn_prefill_tokens_total", kind="prompt"),
        "prefill_cache_fill": metric_value(s, "tnn_prefill_tokens_total", kind="cache_fill"),
        "queries": metric_value(s, "tnn_prefix_cache_queries_total"),
        "hits": metric_value(s, "tnn_prefix_cache_hits_total"),
        "prompt_tokens": metric_value(s, "tnn_prompt_tokens_total"),
        "entries": metric_value(s, "tnn_prefix_cache_entries", tier="memory"),
        "bytes": metric_value(s, "tnn_prefix_cache_bytes", tier="memory"),
    }


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if k not in ("entries", "bytes")}


def per_turn(runs: list[list[dict[str, Any]]]) -> list[dict[str, float]]:
    """Median over runs (repeats or users) of each turn's numbers."""
    return [{key: statistics.median(run[t][key] for run in runs) for key in runs[0][t]} for t in range(len(runs[0]))]


async def chat_scenario(on: str, off: str, args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    before = {url: counters(url) for url in (on, off)}
    async with httpx.AsyncClient(timeout=600) as client:
        for r in range(args.repeats):
            questions = [text_of(50, 1000 * r + t, on) for t in range(args.turns)]
            runs.append(await conversation(client, on, off, [], questions, args.answer_tokens))
    return {"turns": per_turn(runs), "repeats": args.repeats,
            "on": difference(counters(on), before[on]), "off": difference(counters(off), before[off])}  # fmt: skip


async def shared_scenario(on: str, off: str, args: argparse.Namespace) -> dict[str, Any]:
    system = [{"role": "system", "content": text_of(1000, 7, on)}]
    system_tokens = httpx.post(on + "/tokenize", json={"messages": system}, timeout=30).json()["count"]
    before = {url: counters(url) for url in (on, off)}
    questions = [[text_of(50, 100 * u + t, on) for t in range(args.shared_turns)] for u in range(args.users)]
    first = asyncio.Event() if args.arrival == "first-alone" else None
    async with httpx.AsyncClient(timeout=1200, limits=httpx.Limits(max_connections=4 * args.users)) as client:
        runs = await asyncio.gather(*(
            conversation(client, on, off, system, questions[u], args.answer_tokens,
                         first_done=first if u == 0 else None, wait=first if u > 0 else None)
            for u in range(args.users)
        ))  # fmt: skip
    return {"turns": per_turn(list(runs)), "users": args.users, "system_prompt_tokens": system_tokens,
            "arrival": args.arrival,
            "on": difference(counters(on), before[on]), "off": difference(counters(off), before[off])}  # fmt: skip


async def restart_scenario(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    cache_dir = Path(tempfile.mkdtemp(prefix="tnn-state-cache-"))
    server_args = ["--state-cache-dir", str(cache_dir)]
    history: list[dict[str, str]] = []
    async with httpx.AsyncClient(timeout=600) as client:
        with ServerProcess(model_dir, args=server_args) as first:
            questions = [text_of(50, 500 + t, first.url) for t in range(4)]
            for question in questions[:3]:
                history.append({"role": "user", "content": question})
                reply = await ask(client, first.url, history, args.answer_tokens)
                history.append({"role": "assistant", "content": reply["answer"]})
        files = sorted(cache_dir.glob("*.safetensors"))
        history.append({"role": "user", "content": questions[3]})
        with ServerProcess(model_dir, args=server_args) as second:
            reloaded = metric_value(scrape_metrics(second.url), "tnn_prefix_cache_entries", tier="disk")
            warm = await ask(client, second.url, history, 1)
            hits = metric_value(scrape_metrics(second.url), "tnn_prefix_cache_hits_total")
            log = second.log()
        with ServerProcess(model_dir, env={"TNN_STATE_CACHE_MEMORY": "0"}) as cold_server:
            cold = await ask(client, cold_server.url, history, 1)
    return {
        "files_written_at_shutdown": len(files), "disk_bytes": sum(f.stat().st_size for f in files),
        "entries_reloaded": reloaded, "prompt_tokens": warm["prompt_tokens"], "cached_tokens": warm["cached_tokens"],
        "hits_total_after_turn": hits, "ttft_from_disk_s": warm["ttft"], "ttft_cold_s": cold["ttft"],
        "reload_log": [line for line in log.splitlines() if "reloaded" in line],
    }  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [key for key in ("chat", "shared") if result[key] is not None]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        title = "one conversation" if key == "chat" else "shared system prompt"
        turns = result[key]["turns"]
        x = range(1, len(turns) + 1)
        ax.plot(x, [1000 * t["ttft_off"] for t in turns], "o-", label="cache off")
        ax.plot(x, [1000 * t["ttft_on"] for t in turns], "o-", label="cache on")
        ax.set_xlabel("turn")
        ax.set_ylabel("TTFT (ms, median; log scale)")
        ax.set_yscale("log")  # a shared, busy CPU stalls a request now and then: keep the rest readable
        extra = f", {result[key]['users']} users, {result[key]['system_prompt_tokens']}-token system prompt" \
            if key == "shared" else ""  # fmt: skip
        ax.set_title(f"{title}{extra}", fontsize=10)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"tnn serve prefix-state cache: TTFT per turn ({result['model']}, {result['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--shared-turns", type=int, default=4)
    parser.add_argument("--answer-tokens", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="5 turns, 1 repeat, 4 users, 2 shared turns")
    parser.add_argument(
        "--arrival",
        choices=["together", "first-alone"],
        default="together",
        help="shared system prompt: all users at once, or the first user's first turn alone first",
    )
    parser.add_argument("--scenarios", default="chat,shared,restart", help="comma list of chat, shared, restart")
    parser.add_argument("--out", type=Path, default=RESULTS / "prefix_cache_chat.json")
    args = parser.parse_args()
    if args.quick:
        args.turns, args.repeats, args.users, args.shared_turns = 5, 1, 4, 2
    model_dir = args.model_dir or Path(default_model_dir())
    env = {"TNN_THREADS": "1", "TNN_MAX_PROMPT_TOKENS": "16384"}
    started = time.time()
    with ServerProcess(model_dir, env=env, ready_timeout=300) as on, \
            ServerProcess(model_dir, env={**env, "TNN_STATE_CACHE_MEMORY": "0"}, ready_timeout=300) as off:  # fmt: skip
        scenarios = args.scenarios.split(",")
        chat = asyncio.run(chat_scenario(on.url, off.url, args)) if "chat" in scenarios else None
        shared = asyncio.run(shared_scenario(on.url, off.url, args)) if "shared" in scenarios else None
        samples = scrape_metrics(on.url)
        budget_line = next((line for line in on.log().splitlines() if "prefix cache:" in line), "")
    restart = asyncio.run(restart_scenario(model_dir, args)) if "restart" in scenarios else None
    entries = metric_value(samples, "tnn_prefix_cache_entries", tier="memory")
    entry_bytes = metric_value(samples, "tnn_prefix_cache_bytes", tier="memory") / max(1.0, entries)
    budget = re.search(r"([\d.]+) MiB on \S+ = (\d+) states", budget_line)
    result = {
        "model": model_dir.name, "device": "cpu", "threads_per_server": 1, "torch": torch.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count(), "seconds": round(time.time() - started, 1),
        "answer_tokens": args.answer_tokens,
        "memory": {"bytes_per_entry": entry_bytes, "entries_held_at_end": entries,
                   "default_budget_mib": float(budget.group(1)) if budget else None,
                   "entries_under_default_budget": int(budget.group(2)) if budget else None,
                   "log": budget_line},  # fmt: skip
        "chat": chat, "shared": shared, "restart": restart,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    for key in ("chat", "shared"):
        if result[key] is None:
            continue
        turns = result[key]["turns"]
        print(f"{key}: TTFT turn 2 on/off {turns[1]['ttft_on'] * 1000:.0f}/{turns[1]['ttft_off'] * 1000:.0f} ms, "
              f"last turn on/off {turns[-1]['ttft_on'] * 1000:.0f}/{turns[-1]['ttft_off'] * 1000:.0f} ms; "
              f"prefill tokens on {result[key]['on']} off {result[key]['off']}")  # noqa: T201  # fmt: skip
    print(f"restart: {restart}")  # noqa: T201
    print(f"wrote {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
