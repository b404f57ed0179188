"""Prompt prefill tokens/s of the shipped model: this tree against a baseline git ref, and llama.cpp's llama-bench.

    .venv/bin/python benchmarks/prefill_speed.py                        # baseline main, 1 and 2 threads, 3 rounds
    .venv/bin/python benchmarks/prefill_speed.py --baseline HEAD~3 --rounds 5 --threads 2
    .venv/bin/python benchmarks/prefill_speed.py --no-llama             # TNN only

`TnnLM.prefill` (what the engine runs on a prompt: logits of the last position and the state) on random prompts of
32, 256 and 2,048 tokens (plus 1,800, the long prompt of vs_llamacpp.py) at batch 1 and 8, each timed in a fresh
worker process per variant: "current" imports this tree's tnn.model, "baseline" the `model/` folder of the baseline
ref (git archive; the shipped model files come from this tree, so both run the same weights). Per worker and case:
two warm-up calls, then the median of --repeats calls. Variants (and llama-bench, when the cached llama.cpp build
of vs_llamacpp.py exists: `llama-bench -p 32,256,2048 -n 0 -t T`, its matched GPT-2 of the same shape) alternate
within each round, --rounds rounds; each figure is the median over rounds, so a neighbour's burst on a shared machine
lands on every variant alike. llama-bench runs one sequence: batch 8 is compared with its batch-1 pp figure.
Writes benchmarks/results/prefill_speed.json and .png.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.* (llama.cpp helpers)

from benchmarks.llamacpp import CACHE, build_llama, llama_bench  # noqa: E402
from benchmarks.vs_llamacpp import BENCH_PROMPTS, shipped_pair  # noqa: E402

logger = logging.getLogger("prefill_speed")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LENGTHS = (32, 256, 1800, 2048)
BATCHES = (1, 8)

# A worker: imports tnn.model from sys.argv[1] (a folder holding tnn/model) or the installed tree ("-"), times
# TnnLM.prefill on the shipped model directory sys.argv[2] for each (batch, length) and prints JSON rows.
WORKER = """
import json, statistics, sys, time
if sys.argv[1] != "-":
    sys.path.insert(0, sys.argv[1])
import torch
import tnn.model
threads, repeats, cases = int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
torch.set_num_threads(threads)
model = tnn.model.load(sys.argv[2])
generator = torch.Generator().manual_seed(0)
rows = []
for batch, length in cases:
    tokens = torch.randint(2, model.config.vocab_size, (batch, length), generator=generator)
    for _ in range(2):
        model.prefill(tokens)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.prefill(tokens)
        times.append(time.perf_counter() - start)
    rows.append({"batch": batch, "length": length, "seconds": statistics.median(times)})
print(json.dumps({"module": tnn.model.__file__, "rows": rows}))
"""


def baseline_tree(ref: str, into: Path) -> Path:
    """`model/` of `ref` as an importable tnn.model under `into` (a folder to put first on sys.path)."""
    package = into / "tnn"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "model"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(package)], input=archive.stdout, check=True)
    return into


def run_worker(tree: str, model_dir: Path, threads: int, repeats: int, cases: list[tuple[int, int]]) -> dict[str, Any]:
    command = [sys.executable, "-c", WORKER, tree, str(model_dir), str(threads), str(repeats), json.dumps(cases)]
    env = {"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> None:
    """Rounds of every variant and thread count; `save` gets the results so far after each round."""
    build = None if args.no_llama else build_llama(args.cache, build=False)
    if build is None and not args.no_llama:
        logger.warning("no cached llama.cpp build in %s: TNN only (vs_llamacpp.py builds it)", args.cache)
    pair = shipped_pair(build, args.cache)
    cases = [(batch, length) for batch in BATCHES for length in LENGTHS]
    samples: dict[tuple[str, int, int, int], list[float]] = {}
    results = {
        "baseline": args.baseline, "baseline_commit": git_commit(args.baseline), "current_commit": git_commit("HEAD"),
        "model": str(pair.tnn_dir), "shape": pair.shape, "repeats": args.repeats,
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "llama_cpp": None if build is None else build.version, "modules": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"current": "-", "baseline": str(baseline_tree(args.baseline, Path(scratch)))}
        for round_index in range(args.rounds):
            for threads in args.threads:
                for variant, tree in trees.items():
                    report = run_worker(tree, pair.tnn_dir, threads, args.repeats, cases)
                    results["modules"][variant] = report["module"]
                    for row in report["rows"]:
                        key = (variant, threads, row["batch"], row["length"])
                        samples.setdefault(key, []).append(row["batch"] * row["length"] / row["seconds"])
                if build is not None and pair.gguf is not None:
                    for row in llama_bench(build.bench, pair.gguf, threads=threads, prompts=BENCH_PROMPTS, depths=[],
                                           gen=0, repetitions=args.repeats):  # fmt: skip
                        samples.setdefault(("llama.cpp", threads, 1, row["tokens"]), []).append(row["tokens_per_s"])
            results["rounds"] = round_index + 1
            results["rows"] = [
                {"variant": variant, "threads": threads, "batch": batch, "length": length,
                 "tokens_per_s": statistics.median(values), "per_round": values}
                for (variant, threads, batch, length), values in samples.items()
            ]  # fmt: skip
            save(results)
            logger.info("round %d of %d done", round_index + 1, args.rounds)


def git_commit(ref: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def table(results: dict[str, Any]) -> str:
    """Markdown: tokens/s per threads x batch x length, baseline / current / llama.cpp (batch-1 pp)."""
    by_key = {(r["variant"], r["threads"], r["batch"], r["length"]): r["tokens_per_s"] for r in results["rows"]}
    lines = ["| threads | batch | prompt | baseline | current | speed-up | llama.cpp pp | current / llama.cpp |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for threads in sorted({r["threads"] for r in results["rows"]}):
        for batch in BATCHES:
            for length in LENGTHS:
                base, now = (
                    by_key.get(("baseline", threads, batch, length)),
                    by_key.get(("current", threads, batch, length)),
                )
                llama = by_key.get(("llama.cpp", threads, 1, length))
                if base is None or now is None:
                    continue
                ratio = f"{now / llama:.2f}" if llama else "-"
                llama_cell = f"{llama:,.0f}" if llama else "-"
                lines.append(f"| {threads} | {batch} | {length} | {base:,.0f} | {now:,.0f} | {now / base:.1f}x | "
                             f"{llama_cell} | {ratio} |")  # fmt: skip
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads_list = sorted({r["threads"] for r in results["rows"]})
    by_key = {(r["variant"], r["threads"], r["batch"], r["length"]): r["tokens_per_s"] for r in results["rows"]}
    fig, axes = plt.subplots(1, len(threads_list), figsize=(6 * len(threads_list), 4), squeeze=False)
    cases = [(batch, length) for batch in BATCHES for length in LENGTHS]
    for ax, threads in zip(axes[0], threads_list, strict=True):
        for offset, variant in ((-0.27, "baseline"), (0.0, "current"), (0.27, "llama.cpp")):
            heights = [by_key.get((variant, threads, 1 if variant == "llama.cpp" else b, n), 0.0) for b, n in cases]
            ax.bar([i + offset for i in range(len(cases))], heights, width=0.27,
                   label=f"{variant} ({results['baseline']})" if variant == "baseline" else variant)  # fmt: skip
        ax.set_xticks(range(len(cases)), [f"B{b}\n{n}" for b, n in cases], fontsize=8)
        ax.set_title(f"prefill tokens/s, {threads} thread{'s' if threads > 1 else ''}")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(f"TnnLM.prefill (shipped model) vs llama-bench pp (GPT-2, same shape; batch 1): medians of "
                 f"{results['rounds']} interleaved rounds", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="main", help="git ref whose model/ is the baseline (main)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch / llama.cpp threads (1 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, variants alternating within each (3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case per worker, llama-bench -r (3)")
    parser.add_argument("--no-llama", action="store_true", help="skip llama-bench")
    parser.add_argument("--cache", type=Path, default=CACHE, help="vs_llamacpp.py's llama.cpp cache")
    parser.add_argument("--out", type=Path, default=RESULTS / "prefill_speed.json", help="results JSON (.png beside)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(results: dict[str, Any]) -> None:  # after every round: a run cut short keeps what it measured
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        plot(results, args.out.with_suffix(".png"))
        print(table(results), flush=True)

    measure(args, save)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
