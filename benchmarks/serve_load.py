"""Load benchmark of `tnn serve`: concurrency sweep over HTTP (real subprocess, streaming) and the same workload
through the engine in-process, so the HTTP/SSE overhead is a measured ratio.

    .venv/bin/python benchmarks/serve_load.py                        # random tiny model (seconds to build)
    .venv/bin/python benchmarks/serve_load.py --model small          # random model of the shipped model's shape
    .venv/bin/python benchmarks/serve_load.py --model-dir DIR        # any model directory
    .venv/bin/python benchmarks/serve_load.py --methods etsc-tail reduced --state-memory 256MiB --levels 16 64 256
        # the shipped model converted by each method, one server each under the same state budget, HTTP only,
        # the methods' rounds interleaved; writes serve_methods.json/.png

Closed loop: `c` clients each send requests back to back (streaming, ignore_eos, fixed prompt/generation length
mix). Per level: a warm-up round, then `--repeats` measured rounds; each statistic is the median over rounds.
TTFT = request start to the first streamed token; ITL = gaps between successive reads that carried tokens (as
`vllm bench serve` counts chunks: under load the server coalesces several tokens into one write); TPOT = per
request (last token - first token) / (tokens - 1). Writes benchmarks/results/serve_load.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support (tiny model, ServerProcess)

import tnn.model  # noqa: E402
from tests.support import ServerProcess, make_tiny_model_dir  # noqa: E402
from tnn.model import TnnConfig, TnnLM, attach_ssm, save_model  # noqa: E402
from tnn.model.loading import copy_tokenizer  # noqa: E402
from tnn.model.sampling import SamplingParams  # noqa: E402
from tnn.server.app import build_engine  # noqa: E402
from tnn.server.engine import Engine  # noqa: E402
from tnn.server.generation import ChoiceDelta, GenerationRequest, RequestError  # noqa: E402
from tnn.server.metrics import Metrics  # noqa: E402
from tnn.server.settings import Settings  # noqa: E402

PROMPT_LENGTHS = (16, 64, 256)  # tokens
GENERATION_LENGTHS = (32, 64, 128)
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Sample:
    ttft: float
    itls: list[float]
    tokens: int
    tpot: float  # (last token - first token) / (tokens - 1)


def sample_from(start: float, times: list[float], tokens: int) -> Sample:
    """times: arrival of each read (HTTP) or event (engine) that carried tokens."""
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return Sample(times[0] - start, gaps, tokens, (times[-1] - times[0]) / max(1, tokens - 1))


@dataclass
class Round:
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0

    def stats(self) -> dict[str, float]:
        ttfts = sorted(s.ttft for s in self.samples)
        itls = sorted(x for s in self.samples for x in s.itls)
        tpots = sorted(s.tpot for s in self.samples)
        tokens = sum(s.tokens for s in self.samples)
        return {
            "ttft_p50_ms": 1000 * percentile(ttfts, 50),
            "ttft_p99_ms": 1000 * percentile(ttfts, 99),
            "itl_p50_ms": 1000 * percentile(itls, 50),
            "itl_p99_ms": 1000 * percentile(itls, 99),
            "tpot_p50_ms": 1000 * percentile(tpots, 50),
            "tokens_per_s": tokens / self.seconds,
            "requests_per_s": len(self.samples) / self.seconds,
        }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


def workload(concurrency: int, requests_per_client: int, vocab: int) -> list[list[tuple[list[int], int]]]:
    """Per client, its requests: (prompt token ids, max_tokens), cycling through the length mix."""
    generator = torch.Generator().manual_seed(0)
    clients = []
    for c in range(concurrency):
        items = []
        for r in range(requests_per_client):
            k = c * requests_per_client + r
            length = PROMPT_LENGTHS[k % len(PROMPT_LENGTHS)]
            prompt = torch.randint(2, vocab, (length,), generator=generator).tolist()
            items.append((prompt, GENERATION_LENGTHS[(k // len(PROMPT_LENGTHS)) % len(GENERATION_LENGTHS)]))
        clients.append(items)
    return clients


async def http_request(http: httpx.AsyncClient, prompt: list[int], max_tokens: int) -> Sample:
    # "stop": [] overrides a model's default stop strings (generation_config.json), as the engine rows have none
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stop": [], "stream": True,
            "temperature": 1.0}  # fmt: skip
    start = time.perf_counter()
    times = []
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for data in response.aiter_raw():
            if b'"text":"' in data.replace(b'"text":""', b""):  # a read that carried generated text
                times.append(time.perf_counter())
    return sample_from(start, times, max_tokens)


async def http_round(url: str, clients: list[list[tuple[list[int], int]]]) -> Round:
    limits = httpx.Limits(max_connections=len(clients) + 4, max_keepalive_connections=len(clients) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:

        async def client(items: list[tuple[list[int], int]]) -> list[Sample]:
            return [await http_request(http, prompt, n) for prompt, n in items]

        start = time.perf_counter()
        results = await asyncio.gather(*(client(items) for items in clients))
        return Round([s for r in results for s in r], time.perf_counter() - start)


async def engine_round(engine: Engine, clients: list[list[tuple[list[int], int]]]) -> Round:
    async def one(prompt: list[int], max_tokens: int) -> Sample:
        start = time.perf_counter()
        request = GenerationRequest(
            request_id="bench", prompts=[prompt], sampling=SamplingParams(), max_tokens=max_tokens,
            ignore_eos=True, arrival=time.monotonic(),
        )  # fmt: skip
        handle = engine.submit(request)
        times = []
        while not handle.done:
            event = await handle.next_event(60)
            if isinstance(event, RequestError):
                raise RuntimeError(event.message)
            if isinstance(event, ChoiceDelta) and event.text:
                times.append(time.perf_counter())
        return sample_from(start, times, max_tokens)

    async def client(items: list[tuple[list[int], int]]) -> list[Sample]:
        return [await one(prompt, n) for prompt, n in items]

    start = time.perf_counter()
    results = await asyncio.gather(*(client(items) for items in clients))
    return Round([s for r in results for s in r], time.perf_counter() - start)


def median_stats(rounds: list[Round]) -> dict[str, float]:
    per_round = [r.stats() for r in rounds]
    return {key: statistics.median(s[key] for s in per_round) for key in per_round[0]}


def build_model_dir(kind: str, root: Path) -> Path:
    tiny = make_tiny_model_dir(root / "tiny")
    if kind == "tiny":
        return tiny
    config = TnnConfig(vocab_size=4096, d_model=256, n_layers=6, d_glu=256, dropout=0.0, train_length=512)
    torch.manual_seed(0)
    model = attach_ssm(TnnLM(config).eval())
    directory = root / "small"
    save_model(model, directory)
    copy_tokenizer(tiny, directory)  # a smaller tokenizer than the model's vocabulary is fine for a load test
    return directory


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [r["concurrency"] for r in results["levels"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for mode in ("http", "engine"):
        axes[0].plot(levels, [r[mode]["tokens_per_s"] for r in results["levels"]], marker="o", label=mode)
        axes[1].plot(levels, [r[mode]["ttft_p50_ms"] for r in results["levels"]], marker="o", label=f"{mode} p50")
        axes[1].plot(
            levels, [r[mode]["ttft_p99_ms"] for r in results["levels"]], marker="x", ls="--", label=f"{mode} p99"
        )
        axes[2].plot(levels, [r[mode]["itl_p50_ms"] for r in results["levels"]], marker="o", label=f"{mode} p50")
        axes[2].plot(
            levels, [r[mode]["itl_p99_ms"] for r in results["levels"]], marker="x", ls="--", label=f"{mode} p99"
        )
    _label_axes(axes, ("generated tokens/s", "time to first token (ms)", "inter-token latency (ms)"))
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    fig.suptitle(f"tnn serve load ({results['model']} model, {results['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


async def run_engine_levels(settings: Settings, levels: list[int], args: argparse.Namespace, vocab: int) -> dict:
    engine = build_engine(settings, Metrics())
    engine.warmup()
    engine.start(asyncio.get_running_loop())
    out = {}
    try:
        for c in levels:
            clients = workload(c, args.requests_per_client, vocab)
            await engine_round(engine, clients)  # warm-up round
            out[c] = median_stats([await engine_round(engine, clients) for _ in range(args.repeats)])
            print(f"engine c={c}: {out[c]}", flush=True)
    finally:
        await asyncio.to_thread(engine.stop)
    return out


def _label_axes(axes: Any, titles: tuple[str, ...]) -> None:
    """Log-2 concurrency on x, a title, a grid and a legend on each of `axes`."""
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def converted_dir(source: Path, method: str, root: Path) -> Path:
    """`source` converted by `method`, saved as a model directory (with its tokenizer) under root."""
    model = attach_ssm(tnn.model.load(source), method=method)  # type: ignore[arg-type]
    directory = root / method
    save_model(model, directory)
    copy_tokenizer(source, directory)
    return directory


def slots_from_log(log: str) -> int:
    """The slot count of the startup line 'N state slots x ...'."""
    for line in log.splitlines():
        if " state slots x " in line:
            return int(line.split(" state slots x ")[0].split()[-1])
    raise RuntimeError(f"no slot line in the server log:\n{log}")


def compare_methods(args: argparse.Namespace) -> int:
    """One server per conversion method under the same --state-memory; rounds interleaved per level."""
    source = args.model_dir or tnn.model.default_model_dir()
    vocab = json.loads((source / "config.json").read_text())["vocab_size"]
    flags = ["--device", args.device, "--threads", str(args.threads), "--state-memory", args.state_memory,
             "--max-num-seqs", str(args.max_num_seqs), "--max-waiting-requests", "4096"]  # fmt: skip
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {
            m: ServerProcess(converted_dir(source, m, Path(tmp)), args=flags, ready_timeout=600) for m in args.methods
        }
        try:
            for server in servers.values():
                server.start()
            slots = {m: slots_from_log(server.log()) for m, server in servers.items()}
            for server in servers.values():  # warm-up: a small round each
                asyncio.run(http_round(server.url, workload(4, 1, vocab)))
            for c in args.levels:
                clients = workload(c, args.requests_per_client, vocab)
                rounds: dict[str, list[Round]] = {m: [] for m in servers}
                for _ in range(args.repeats):
                    for method, server in servers.items():
                        rounds[method].append(asyncio.run(http_round(server.url, clients)))
                for method in servers:
                    results.setdefault(method, {})[c] = median_stats(rounds[method])
                    print(f"{method} c={c} slots={slots[method]}: {results[method][c]}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    out = {
        "model": source.name,
        "device": args.device,
        "threads": args.threads,
        "state_memory": args.state_memory,
        "max_num_seqs": args.max_num_seqs,
        "torch": torch.__version__,
        "prompt_lengths": PROMPT_LENGTHS,
        "generation_lengths": GENERATION_LENGTHS,
        "requests_per_client": args.requests_per_client,
        "repeats": args.repeats,
        "slots": slots,
        "levels": [{"concurrency": c, **{m: results[m][c] for m in args.methods}} for c in args.levels],
    }
    output = args.output if args.output != RESULTS / "serve_load.json" else RESULTS / "serve_methods.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(out, indent=2) + "\n")
    plot_methods(out, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return 0


def plot_methods(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [r["concurrency"] for r in results["levels"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, slots in results["slots"].items():
        label = f"{method} ({slots} slots)"
        axes[0].plot(levels, [r[method]["tokens_per_s"] for r in results["levels"]], marker="o", label=label)
        axes[1].plot(levels, [r[method]["itl_p50_ms"] for r in results["levels"]], marker="o", label=f"{label} p50")
        axes[1].plot(levels, [r[method]["itl_p99_ms"] for r in results["levels"]], marker="x", ls="--",
                     label=f"{label} p99")  # fmt: skip
    _label_axes(axes, ("generated tokens/s", "inter-token latency (ms)"))
    axes[1].set_yscale("log")
    fig.suptitle(f"tnn serve by conversion method, --state-memory {results['state_memory']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in both modes (0: torch default)")
    parser.add_argument("--output", type=Path, default=RESULTS / "serve_load.json")
    parser.add_argument("--methods", nargs="+", default=None, help="compare conversion methods (HTTP only)")
    parser.add_argument("--state-memory", default="256MiB", help="with --methods: each server's state budget")
    parser.add_argument("--max-num-seqs", type=int, default=4096, help="with --methods: the slot cap")
    args = parser.parse_args(argv)
    if args.methods:
        return compare_methods(args)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or build_model_dir(args.model, Path(tmp))
        slots = max(args.levels)
        flags = ["--device", args.device, "--threads", str(args.threads), "--max-num-seqs", str(slots),
                 "--state-memory", "0.5",
                 "--max-waiting-requests", "1024", "--max-prompt-tokens", "4096"]  # fmt: skip
        vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        http: dict[int, dict[str, float]] = {}
        with ServerProcess(model_dir, args=flags, ready_timeout=600) as server:
            for c in args.levels:
                clients = workload(c, args.requests_per_client, vocab)
                asyncio.run(http_round(server.url, clients))  # warm-up round
                http[c] = median_stats([asyncio.run(http_round(server.url, clients)) for _ in range(args.repeats)])
                print(f"http c={c}: {http[c]}", flush=True)
        settings = Settings(model_dir=model_dir, device=args.device, threads=args.threads, max_num_seqs=slots,
                            state_memory="0.5", max_waiting_requests=1024, max_prompt_tokens=4096)  # fmt: skip
        engine = asyncio.run(run_engine_levels(settings, args.levels, args, vocab))

    results = {
        "model": args.model_dir.name if args.model_dir else args.model,
        "device": args.device,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "prompt_lengths": PROMPT_LENGTHS,
        "generation_lengths": GENERATION_LENGTHS,
        "requests_per_client": args.requests_per_client,
        "repeats": args.repeats,
        "levels": [
            {
                "concurrency": c,
                "http": http[c],
                "engine": engine[c],
                "http_over_engine_tokens_per_s": http[c]["tokens_per_s"] / engine[c]["tokens_per_s"],
                "http_over_engine_ttft_p50": http[c]["ttft_p50_ms"] / engine[c]["ttft_p50_ms"],
            }
            for c in args.levels
        ],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.output.with_suffix(".png"))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
