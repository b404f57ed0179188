"""Do chat replies of the shipped model end? Length and latency of /v1/chat/completions turns, with the model's
generation_config.json (`--generation-config auto`) and without it (`none`, the behaviour before it existed).

A real `tnn serve` of the shipped model; each conversation (a few user prompts x seeds) is one request through
the `openai` SDK, sent one at a time (the latency a lone user sees). Per mode: finish reasons, completion tokens
and seconds per reply (median, p90, max). `none` replies run to the max_tokens ceiling, so only `--baseline`
requests are sent (at once) in that mode. Writes benchmarks/results/chat_turns.json and .png.

    OMP_NUM_THREADS=1 python benchmarks/chat_turns.py
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support (ServerProcess)

from tests.support import ServerProcess  # noqa: E402
from tnn.model.default import default_model_dir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = (
    "Who art thou?",
    "What news from the battle?",
    "Speak of love.",
    "Where is the king?",
    "Tell me a tale of the sea.",
    "Wilt thou fight for me?",
)


def converse(client: openai.OpenAI, prompt: str, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    reply = client.chat.completions.create(model="default", messages=[{"role": "user", "content": prompt}], seed=seed)
    seconds = time.perf_counter() - start
    choice = reply.choices[0]
    return {
        "prompt": prompt,
        "seed": seed,
        "finish_reason": choice.finish_reason,
        "stop_reason": getattr(choice, "stop_reason", None),
        "tokens": reply.usage.completion_tokens if reply.usage else None,
        "seconds": seconds,
        "reply": choice.message.content,
    }


def summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = [t["tokens"] for t in turns]
    seconds = [t["seconds"] for t in turns]
    reasons: dict[str, int] = {}
    for turn in turns:
        reasons[turn["finish_reason"]] = reasons.get(turn["finish_reason"], 0) + 1

    def stats(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "median": statistics.median(ordered),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "max": ordered[-1],
            "min": ordered[0],
        }

    return {"replies": len(turns), "finish_reasons": reasons, "tokens": stats(tokens), "seconds": stats(seconds)}


def run_mode(model_dir: Path, mode: str, jobs: list[tuple[str, int]], *, parallel: bool) -> list[dict[str, Any]]:
    args = ["--served-model-name", "default", "--generation-config", mode, "--threads", "1"]
    with ServerProcess(model_dir, args=args) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)
        converse(client, "Hail!", 0)  # warm-up
        if not parallel:
            return [converse(client, prompt, seed) for prompt, seed in jobs]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            return list(pool.map(lambda job: converse(client, *job), jobs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt with the generation config")
    parser.add_argument("--baseline", type=int, default=3, help="requests without it (each runs to the ceiling)")
    parser.add_argument("--out", type=Path, default=RESULTS / "chat_turns.json")
    args = parser.parse_args(argv)
    model_dir = default_model_dir()
    jobs = [(prompt, seed) for seed in range(args.seeds) for prompt in PROMPTS]
    auto = run_mode(model_dir, "auto", jobs, parallel=False)
    none = run_mode(model_dir, "none", jobs[: args.baseline], parallel=True) if args.baseline else []
    report = {
        "model_dir": str(model_dir),
        "generation_config": json.loads((model_dir / "generation_config.json").read_text()),
        "auto": summary(auto),
        "none": summary(none) if none else None,
        "none_note": f"{len(none)} requests sent at once (each runs to the max_tokens ceiling)",
        "samples": auto[: len(PROMPTS)],
        "turns": [{k: v for k, v in t.items() if k != "reply"} for t in auto],
        "cpu": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _plot(auto, args.out.with_suffix(".png"))
    print(json.dumps({k: report[k] for k in ("auto", "none", "none_note")}, indent=2))
    for turn in report["samples"]:
        print(f"--- {turn['prompt']} ({turn['tokens']} tokens, {turn['seconds']:.2f}s, {turn['finish_reason']})")
        print(turn["reply"])
    return 0


def _plot(turns: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([t["tokens"] for t in turns], [t["seconds"] for t in turns])
    ax.set_xlabel("completion tokens per reply")
    ax.set_ylabel("seconds per reply (one request at a time)")
    ax.set_title("Shipped model, chat replies with its generation_config.json")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
