"""A long conversation through the Responses API's `previous_response_id`, stored state on vs off, in the same run.

    .venv/bin/python benchmarks/responses_conversation.py              # the shipped model, 20 turns, 3 after restart
    .venv/bin/python benchmarks/responses_conversation.py --turns 6    # a smoke run

Two `tnn serve` processes of the same model run side by side: "stored" with the default prefix-state cache and a
--state-cache-dir (the conversation's state is kept, on disk at shutdown), "re-prefill" with
TNN_STATE_CACHE_MEMORY=0 (every turn prefills the whole stored history: what a server without the state pays).
Each turn sends the same ~30-token user message to both, each continuing its own stored conversation (greedy,
`--answer-tokens` at most), alternating which server goes first. TTFT = request sent to the first
response.output_text.delta event (the openai SDK's stream). After `--turns` turns the stored server is stopped
and started again on its directory, and the conversation goes on for `--after-restart` turns. Per turn:
TTFT on both, input tokens, cached tokens. Writes benchmarks/results/responses_conversation.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support (ServerProcess)

from tests.support import ServerProcess, metric_value, scrape_metrics  # noqa: E402
from tnn.model import default_model_dir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = (
    "the king hath sent for thee and all his lords attend upon the queen within the castle walls while thunder "
    "rolls above the heath where three strange sisters wait to greet the thane with prophecies of crowns"
).split()


def message(turn: int) -> str:
    """A deterministic user message of 24 words (about 30 tokens)."""
    return " ".join(WORDS[(turn * 5 + i) % len(WORDS)] for i in range(24)).capitalize() + "?"


def ask(client: openai.OpenAI, text: str, previous: str | None, answer_tokens: int) -> dict[str, Any]:
    start = time.perf_counter()
    ttft = None
    final = None
    stream = client.responses.create(model="default_model", input=text, previous_response_id=previous,
                                     max_output_tokens=answer_tokens, temperature=0, stream=True)  # fmt: skip
    for event in stream:
        if event.type == "response.output_text.delta" and ttft is None:
            ttft = time.perf_counter() - start
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert final is not None and final.usage is not None
    return {"ttft": ttft if ttft is not None else time.perf_counter() - start, "id": final.id,
            "input_tokens": final.usage.input_tokens,
            "cached_tokens": final.usage.input_tokens_details.cached_tokens}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--after-restart", type=int, default=3)
    parser.add_argument("--answer-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=RESULTS / "responses_conversation.json")
    args = parser.parse_args()
    model_dir = default_model_dir()
    cache_dir = Path(tempfile.mkdtemp(prefix="tnn-responses-"))
    stored_args = ["--state-cache-dir", str(cache_dir)]
    stored = ServerProcess(model_dir, args=stored_args).start()
    plain = ServerProcess(model_dir, env={"TNN_STATE_CACHE_MEMORY": "0"}).start()
    turns: list[dict[str, Any]] = []
    ids: dict[str, str | None] = {"stored": None, "plain": None}
    try:
        clients = {name: openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)
                   for name, server in (("stored", stored), ("plain", plain))}  # fmt: skip
        for client in clients.values():  # warm-up: one throwaway request per server
            ask(client, "Hello", None, 4)
        for turn in range(args.turns):
            order = ["stored", "plain"] if turn % 2 == 0 else ["plain", "stored"]
            results = {}
            for name in order:
                results[name] = ask(clients[name], message(turn), ids[name], args.answer_tokens)
                ids[name] = results[name]["id"]
            turns.append({"turn": turn, "phase": "before_restart",
                          **{f"{key}_{name}": results[name][key] for name in results
                             for key in ("ttft", "input_tokens", "cached_tokens")}})  # fmt: skip
            print(json.dumps(turns[-1]), flush=True)
        prefills_before = metric_value(scrape_metrics(stored.url), "tnn_response_history_prefills_total")
        stored.stop()
        stored = ServerProcess(model_dir, args=stored_args, port=stored.port).start()
        for turn in range(args.turns, args.turns + args.after_restart):
            result = ask(clients["stored"], message(turn), ids["stored"], args.answer_tokens)
            ids["stored"] = result["id"]
            turns.append({"turn": turn, "phase": "after_restart", "ttft_stored": result["ttft"],
                          "input_tokens_stored": result["input_tokens"],
                          "cached_tokens_stored": result["cached_tokens"]})  # fmt: skip
            print(json.dumps(turns[-1]), flush=True)
        prefills_after = metric_value(scrape_metrics(stored.url), "tnn_response_history_prefills_total")
    finally:
        stored.stop()
        plain.stop()
    before = [t for t in turns if t["phase"] == "before_restart"]
    later = before[1:]
    summary = {
        "ttft_stored_median_s": statistics.median(t["ttft_stored"] for t in later),
        "ttft_stored_first_half_median_s": statistics.median(t["ttft_stored"] for t in later[: len(later) // 2]),
        "ttft_stored_second_half_median_s": statistics.median(t["ttft_stored"] for t in later[len(later) // 2 :]),
        "ttft_plain_last_s": before[-1]["ttft_plain"],
        "ttft_stored_last_s": before[-1]["ttft_stored"],
        "ttft_after_restart_median_s": statistics.median(
            t["ttft_stored"] for t in turns if t["phase"] == "after_restart"
        ),
        "history_covered": all(
            t["cached_tokens_stored"] > p["input_tokens_stored"] for p, t in zip(turns, turns[1:], strict=False)
        ),  # fmt: skip
        "history_prefills_before_restart": prefills_before,
        "history_prefills_after_restart": prefills_after,
    }
    out = {
        "benchmark": "responses_conversation",
        "command": "benchmarks/responses_conversation.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "note": "shared CPU (other jobs running), TNN_THREADS=1",
        },  # fmt: skip
        "answer_tokens": args.answer_tokens,
        "summary": summary,
        "turns": turns,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    plot(out, args.out.with_suffix(".png"))
    print(json.dumps(summary, indent=2))


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = out["turns"]
    before = [t for t in turns if t["phase"] == "before_restart"]
    after = [t for t in turns if t["phase"] == "after_restart"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([t["turn"] for t in before], [1000 * t["ttft_plain"] for t in before], "o-", label="history prefilled")
    left.plot([t["turn"] for t in before], [1000 * t["ttft_stored"] for t in before], "o-", label="stored state")
    left.plot([t["turn"] for t in after], [1000 * t["ttft_stored"] for t in after], "s", label="after a restart")
    left.set(xlabel="turn", ylabel="time to first token (ms)", title="previous_response_id: TTFT per turn")
    left.set_ylim(bottom=0)
    right.plot([t["turn"] for t in turns], [t["input_tokens_stored"] for t in turns], "o-", label="input tokens")
    right.plot([t["turn"] for t in turns], [t["cached_tokens_stored"] for t in turns], "o-", label="cached tokens")
    right.axvline(len(before) - 0.5, color="grey", linestyle=":", label="restart")
    right.set(xlabel="turn", ylabel="tokens", title="stored conversation: input vs cached")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle("shipped model, CPU (shared machine), TNN_THREADS=1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
