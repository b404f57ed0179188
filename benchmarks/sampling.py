"""Sampling cost per decode step: the batched fast path (`sample`) against its slow twin (`sample_reference`: every
row through penalties and a full vocabulary sort).

Per scenario (greedy, plain temperature, top-k, top-p, min-p, penalties, a mixed batch), batch 1 and 32, seeded
rows (a generator per row, as the server runs them): median ms of both, interleaved, and the speedup.
Writes benchmarks/results/sampling.json and sampling.png.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampling.py [--vocab 4096] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib
import torch

from tnn.model.sampling import SamplingParams, sample, sample_reference

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

SCENARIOS: dict[str, list[SamplingParams]] = {
    "greedy": [SamplingParams(temperature=0.0)],
    "temperature": [SamplingParams(temperature=0.8)],
    "top_k 50": [SamplingParams(temperature=0.8, top_k=50)],
    "top_p 0.9": [SamplingParams(temperature=0.8, top_p=0.9)],
    "min_p 0.05": [SamplingParams(temperature=0.8, min_p=0.05)],
    "penalties": [SamplingParams(temperature=0.8, repetition_penalty=1.2, frequency_penalty=0.5)],
    "mixed": [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_p=0.95),
        SamplingParams(temperature=0.9, top_k=40),
    ],
}


def inputs(params: list[SamplingParams], batch: int, vocab: int) -> tuple[torch.Tensor, list, dict]:
    rows = [SamplingParams(**{**params[i % len(params)].__dict__, "seed": i}) for i in range(batch)]
    counts = torch.zeros(batch, vocab, dtype=torch.int32)
    counts[:, :64] = 1  # 64 generated tokens per row
    prompt = torch.zeros(batch, vocab, dtype=torch.bool)
    prompt[:, 100:300] = True
    penalised = any(p.penalised for p in rows)
    kwargs = {"output_counts": counts, "prompt_mask": prompt} if penalised else {}
    return rows, [p.generator() for p in rows], kwargs


def measure(name: str, batch: int, vocab: int, repeats: int) -> dict[str, object]:
    rows, generators, kwargs = inputs(SCENARIOS[name], batch, vocab)
    logits = torch.randn(batch, vocab) * 3
    times: dict[str, list[float]] = {"reference": [], "fast": []}
    functions = {"reference": sample_reference, "fast": sample}
    for i in range(repeats + 5):
        for label, fn in functions.items():  # interleaved: both see the same load on a shared CPU
            start = time.perf_counter()
            fn(logits, rows, generators, **kwargs)
            if i >= 5:  # warm-up
                times[label].append(time.perf_counter() - start)
    reference = 1000 * statistics.median(times["reference"])
    fast = 1000 * statistics.median(times["fast"])
    return {"scenario": name, "batch": batch, "reference_ms": reference, "fast_ms": fast, "speedup": reference / fast}


def plot(rows: list[dict[str, object]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, batch in zip(axes, sorted({r["batch"] for r in rows}), strict=True):
        chosen = [r for r in rows if r["batch"] == batch]
        x = range(len(chosen))
        ax.bar([i - 0.2 for i in x], [r["reference_ms"] for r in chosen], 0.4, label="reference (full sort)")
        ax.bar([i + 0.2 for i in x], [r["fast_ms"] for r in chosen], 0.4, label="fast path")
        ax.set_xticks(list(x), [str(r["scenario"]) for r in chosen], rotation=30, ha="right")
        ax.set_title(f"batch {batch}")
        ax.set_yscale("log")
    axes[0].set_ylabel("ms per sampling call (median)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary size (the shipped model's: 4096)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [measure(name, b, args.vocab, args.repeats) for b in args.batch for name in SCENARIOS]
    for row in rows:
        print(f"{row['scenario']:>12} batch {row['batch']:>3}: reference {row['reference_ms']:.3f} ms, "
              f"fast {row['fast_ms']:.3f} ms, {row['speedup']:.1f}x")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    meta = {"vocab": args.vocab, "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__}
    (RESULTS / "sampling.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    plot(rows, RESULTS / "sampling.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
