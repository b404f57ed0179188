"""Structured output on the shipped model: what a constrained row costs per decode step, and 1,000 seeded JSON
samples that must all parse and validate.

1. Cost per decode step (in-process engine, no HTTP): a batch of `--batch` sequences decoding together, all free,
   all constrained by a JSON schema, or half and half; rounds interleave the three mixes. Per mix: wall time per
   engine iteration (step + per-row masks + sampling + accepting tokens, from the first token to the last) and the
   engine's own decode-step histogram (step + masks + sampling). The constrained schema has one long string field,
   so every row decodes `--tokens` tokens in every mix (`ignore_eos` for the free rows).
2. Validity: `--samples` chat requests with `response_format` json_schema (seeds 0..N-1) against a real `tnn serve`,
   `--concurrency` at a time through the `openai` SDK; each reply must parse and validate (jsonschema).

Writes benchmarks/results/structured_output.json and .png.

    OMP_NUM_THREADS=1 python benchmarks/structured_output.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import openai
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support (ServerProcess)

from tests.support import ServerProcess  # noqa: E402
from tnn.model.default import default_model_dir  # noqa: E402
from tnn.model.sampling import SamplingParams  # noqa: E402
from tnn.server.app import build_engine  # noqa: E402
from tnn.server.engine import Engine  # noqa: E402
from tnn.server.generation import ChoiceDelta, GenerationRequest, RequestError  # noqa: E402
from tnn.server.metrics import Metrics  # noqa: E402
from tnn.server.settings import Settings  # noqa: E402
from tnn.server.structured import GrammarSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LONG_SCHEMA = {  # one long string: a constrained row keeps decoding like a free one
    "type": "object",
    "properties": {"speech": {"type": "string", "minLength": 400, "maxLength": 600}},
    "required": ["speech"],
    "additionalProperties": False,
}
SAMPLE_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["merry", "sad", "wroth", "mad"]},
        "lines": {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 1, "maxItems": 2},
    },
    "required": ["name", "age", "mood", "lines"],
    "additionalProperties": False,
}
MIXES = ("free", "constrained", "half")


async def run_batch(engine: Engine, prompt: list[int], grammar: str, mix: str, batch: int, tokens: int) -> float:
    """Submit `batch` requests at once; seconds per engine iteration from the first token to the last."""
    constrained = {"free": 0, "constrained": batch, "half": batch // 2}[mix]
    handles = []
    for i in range(batch):
        request = GenerationRequest(
            request_id=uuid.uuid4().hex,
            prompts=[prompt],
            sampling=SamplingParams(temperature=1.0, seed=i),
            max_tokens=tokens,
            ignore_eos=True,
            grammar=grammar if i < constrained else None,
        )
        handles.append(engine.submit(request))
    first: float | None = None
    counts = []
    for handle in handles:
        generated = 0
        while not handle.done:
            for event in await handle.next_events(60.0):
                if isinstance(event, RequestError):
                    raise RuntimeError(event.message)
                if isinstance(event, ChoiceDelta):
                    generated += len(event.tokens)
                    first = first or time.perf_counter()
        counts.append(generated)
    assert first is not None and min(counts) == tokens, f"every row must decode {tokens} tokens: {counts}"
    return (time.perf_counter() - first) / (tokens - 1)


async def step_costs(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(model_dir=default_model_dir(), max_num_seqs=args.batch, threads=1)
    metrics = Metrics()
    engine = await asyncio.to_thread(build_engine, settings, metrics)
    assert engine.grammars is not None
    grammar = engine.grammars.compile(GrammarSpec("json_schema", LONG_SCHEMA, "bench"))
    prompt = engine.tokenizer.encode("User:\nSpeak.\n\nAssistant:\n")
    engine.warmup()
    engine.start(asyncio.get_running_loop())
    per_iteration: dict[str, list[float]] = {mix: [] for mix in MIXES}
    per_step: dict[str, list[float]] = {mix: [] for mix in MIXES}
    try:
        for round_index in range(args.rounds + 1):
            for mix in MIXES:
                before_sum, before_count = _histogram(metrics)
                seconds = await run_batch(engine, prompt, grammar, mix, args.batch, args.tokens)
                after_sum, after_count = _histogram(metrics)
                if round_index:  # round 0 warms up
                    per_iteration[mix].append(seconds)
                    per_step[mix].append((after_sum - before_sum) / (after_count - before_count))
    finally:
        await asyncio.to_thread(engine.stop)
    free_iteration = statistics.median(per_iteration["free"])
    free_step = statistics.median(per_step["free"])
    return {
        "batch": args.batch,
        "tokens_per_row": args.tokens,
        "rounds": args.rounds,
        "mixes": {
            mix: {
                "iteration_ms_median": statistics.median(per_iteration[mix]) * 1e3,
                "decode_step_ms_median": statistics.median(per_step[mix]) * 1e3,
                "iteration_ratio_to_free": statistics.median(per_iteration[mix]) / free_iteration,
                "decode_step_ratio_to_free": statistics.median(per_step[mix]) / free_step,
            }
            for mix in MIXES
        },
    }


def _histogram(metrics: Metrics) -> tuple[float, float]:
    """(sum, count) of the engine's decode-step histogram."""
    values = {s.name: s.value for m in metrics.decode_step.collect() for s in m.samples}
    return values["tnn_decode_step_seconds_sum"], values["tnn_decode_step_seconds_count"]


async def validity(url: str, samples: int, concurrency: int) -> dict[str, Any]:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "character", "schema": SAMPLE_SCHEMA, "strict": True},
    }
    limit = asyncio.Semaphore(concurrency)
    results: list[dict[str, Any]] = []
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600) as client:

        async def one(seed: int) -> None:
            async with limit:
                reply = await client.chat.completions.create(
                    model="default",
                    messages=[{"role": "user", "content": "Describe a character of the play as JSON."}],
                    response_format=response_format,  # type: ignore[arg-type]
                    seed=seed,
                    max_tokens=160,
                )
            choice = reply.choices[0]
            entry = {"seed": seed, "finish_reason": choice.finish_reason, "tokens": reply.usage.completion_tokens}  # type: ignore[union-attr]
            try:
                jsonschema.validate(json.loads(choice.message.content or ""), SAMPLE_SCHEMA)
                entry["valid"] = True
            except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
                entry["valid"] = False
                entry["error"] = str(exc)[:200]
                entry["content"] = choice.message.content
            results.append(entry)

        start = time.perf_counter()
        await asyncio.gather(*(one(seed) for seed in range(samples)))
        seconds = time.perf_counter() - start
    tokens = [r["tokens"] for r in results]
    return {
        "samples": samples,
        "valid": sum(r["valid"] for r in results),
        "finish_reasons": {
            reason: sum(r["finish_reason"] == reason for r in results)
            for reason in {r["finish_reason"] for r in results}
        },
        "tokens_median": statistics.median(tokens),
        "tokens_max": max(tokens),
        "seconds": seconds,
        "invalid": [r for r in results if not r["valid"]][:10],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS / "structured_output.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    costs = asyncio.run(step_costs(args))
    print(json.dumps(costs, indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"step_cost": costs, "validity": None}, indent=2) + "\n")  # kept if part 2 fails
    server_args = ["--served-model-name", "default", "--threads", "1", "--max-num-seqs", str(args.concurrency)]
    with ServerProcess(default_model_dir(), args=server_args, ready_timeout=300) as server:
        valid = asyncio.run(validity(server.url, args.samples, args.concurrency))
    report = {
        "step_cost": costs,
        "validity": valid,
        "schemas": {"step_cost": LONG_SCHEMA, "validity": SAMPLE_SCHEMA},
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in valid.items() if k != "invalid"}, indent=2))
    return 0 if valid["valid"] == valid["samples"] else 1


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixes = report["step_cost"]["mixes"]
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(mixes)
    ax.bar(
        [x - 0.2 for x in range(len(names))],
        [mixes[n]["iteration_ms_median"] for n in names],
        0.4,
        label="engine iteration",
    )
    ax.bar(
        [x + 0.2 for x in range(len(names))],
        [mixes[n]["decode_step_ms_median"] for n in names],
        0.4,
        label="decode step (histogram)",
    )
    ax.set_xticks(range(len(names)), [f"{n}\n×{mixes[n]['iteration_ratio_to_free']:.2f}" for n in names])
    ax.set_ylabel("ms, median")
    ax.set_ylim(0, 1.3 * max(max(m["iteration_ms_median"], m["decode_step_ms_median"]) for m in mixes.values()))
    valid = report["validity"]
    ax.set_title(
        f"Batch {report['step_cost']['batch']}, shipped model; {valid['valid']}/{valid['samples']} JSON samples valid"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
