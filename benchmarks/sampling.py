"""Sampling cost per decode step: `sample` now (one native call from the logits for rows without a bias, a penalty
or a grammar), `sample` as it was at a baseline revision (its own sampling modules and a build of its own
sampler.c, loaded beside the current ones), the torch ops path that still serves rows with a bias, a penalty or a
grammar (`_sample`: softmax and filters in torch, then the native draw), and the slow twin (`sample_reference`:
every row through penalties and a full vocabulary sort); and the engine's whole per-step sampling
(`Engine._sample`'s work: the draw, the host lists of tokens and finite rows, `sampled_logprobs`) before and now.

Per scenario (greedy, plain temperature, top-k, temperature 0.8 with top-p 0.95, min-p, penalties, a mixed
batch), batch 1, 4, 16 and 64, seeded rows (a generator per row, as the server runs them): median ms of each
(all but the slow twin interleaved). Writes benchmarks/results/sampling.json and sampling.png.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampling.py [--baseline 1a49473] [--repeats 100]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import matplotlib
import torch

from tnn.model.native_lib import SAMPLER, NativeSource, build_library, open_library
from tnn.model.sampling import (
    SERIAL_SAMPLING_ELEMENTS,
    SamplingParams,
    _sample,
    sample,
    sample_reference,
    serial_below,
)
from tnn.server.logprobs import sampled_logprobs

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
BASELINE = "1a49473"  # the sampler before the one-call native path (torch softmax, then sampler.c's tnn_draw)

SCENARIOS: dict[str, list[SamplingParams]] = {
    "greedy": [SamplingParams(temperature=0.0)],
    "temperature": [SamplingParams(temperature=0.8)],
    "top_k 50": [SamplingParams(temperature=0.8, top_k=50)],
    "top_p 0.95": [SamplingParams(temperature=0.8, top_p=0.95)],
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


def _module(name: str, source: str, imports: dict[str, ModuleType]) -> ModuleType:
    """Module `name` from source, its `from X import ...` lines resolved against `imports` (X -> module)."""
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    saved = {key: sys.modules.get(key) for key in imports}
    sys.modules.update(imports)
    try:
        exec(compile(source, f"{name}.py", "exec"), module.__dict__)
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key)
            else:
                sys.modules[key] = value
    return module


def baseline_sample(revision: str, scratch: Path) -> Callable[..., object]:
    """`sample` as of git `revision`: its model/sampling.py and model/sampling_native.py, the latter calling a
    build of that revision's model/sampler.c."""

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    (scratch / "sampler.c").write_text(show("model/sampler.c"))
    library = open_library(
        build_library(NativeSource(scratch / "sampler.c", SAMPLER.flags, cxx=False), scratch / "s.so")
    )
    native = _module("baseline_sampling_native", show("model/sampling_native.py"), {})
    native.sampler_library = lambda: library  # type: ignore[attr-defined]
    module = _module("baseline_sampling", show("model/sampling.py"), {"tnn.model.sampling_native": native})
    return module.sample


def torch_ops(logits: torch.Tensor, rows: list, generators: list, **kwargs):
    """The torch ops path (what `sample` ran for every row before the one-call native path)."""
    with serial_below(logits.numel(), SERIAL_SAMPLING_ELEMENTS):
        return _sample(
            logits, rows, generators, kwargs.get("output_counts"), kwargs.get("prompt_mask"), kwargs.get("allowed")
        )


HostRows = tuple[list[int], list[bool], list[bool], list]


def engine_before(sampler: Callable[..., object]) -> Callable[..., HostRows]:
    """Engine._sample's work before, with `sampler`: the draw, one stacked host copy, the logprobs (none asked)."""

    def run(logits: torch.Tensor, rows: list, generators: list, **kwargs) -> HostRows:
        result = sampler(logits, rows, generators, **kwargs)
        host = torch.stack([result.tokens, result.finite.long(), result.any_allowed.long()]).tolist()
        logprobs = sampled_logprobs([None] * len(rows), logits, host[0])
        return host[0], [bool(ok) for ok in host[1]], [bool(ok) for ok in host[2]], logprobs

    return run


def engine_after(logits: torch.Tensor, rows: list, generators: list, **kwargs) -> HostRows:
    """Engine._sample's work now: `sample`, the host lists (`SampleResult.on_host`), the logprobs (none asked)."""
    result = sample(logits, rows, generators, **kwargs)
    tokens, finite, allowed = result.on_host()
    return tokens, finite, allowed, sampled_logprobs([None] * len(rows), logits, tokens)


def medians(functions: dict[str, Callable[..., object]], args: tuple, kwargs: dict, repeats: int) -> dict[str, float]:
    """Median ms per call of each function, calls interleaved (all see the same load on a shared CPU), after 5
    warm-up rounds."""
    times: dict[str, list[float]] = {label: [] for label in functions}
    for i in range(repeats + 5):
        for label, fn in functions.items():
            start = time.perf_counter()
            fn(*args, **kwargs)
            if i >= 5:
                times[label].append(time.perf_counter() - start)
    return {f"{label}_ms": 1000 * statistics.median(values) for label, values in times.items()}


def measure(name: str, batch: int, vocab: int, repeats: int, before: Callable[..., object]) -> dict[str, object]:
    """The slow twin on its own (tens of ms a call at batch 64: interleaved, it would evict the caches the others
    run from), a tenth as many times; the other paths interleaved."""
    rows, generators, kwargs = inputs(SCENARIOS[name], batch, vocab)
    args = (torch.randn(batch, vocab) * 3, rows, generators)
    reference = medians({"reference": sample_reference}, args, kwargs, max(10, repeats // 10))
    interleaved = {
        "before": before,
        "torch_ops": torch_ops,
        "fast": sample,
        "engine_before": engine_before(before),
        "engine_after": engine_after,
    }
    timed = medians(interleaved, args, kwargs, repeats)
    return {"scenario": name, "batch": batch, **reference, **timed, "speedup": timed["before_ms"] / timed["fast_ms"]}


def plot(rows: list[dict[str, object]], path: Path) -> None:
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), sharey=True, squeeze=False)
    bars = [("reference_ms", "reference (full sort)"), ("before_ms", "sample before"), ("fast_ms", "sample now")]
    for ax, batch in zip(axes[0], batches, strict=True):
        chosen = [r for r in rows if r["batch"] == batch]
        x = range(len(chosen))
        for offset, (key, label) in zip((-0.27, 0.0, 0.27), bars, strict=True):
            ax.bar([i + offset for i in x], [r[key] for r in chosen], 0.27, label=label)
        ax.set_xticks(list(x), [str(r["scenario"]) for r in chosen], rotation=30, ha="right")
        ax.set_title(f"batch {batch}")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("ms per sampling call (median)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary size (the shipped model's: 4096)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", default=BASELINE, help="git revision whose `sample` is the baseline")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        before = baseline_sample(args.baseline, Path(scratch))
        rows = [measure(name, b, args.vocab, args.repeats, before) for b in args.batch for name in SCENARIOS]
    for row in rows:
        print(f"{row['scenario']:>12} batch {row['batch']:>3}: reference {row['reference_ms']:.3f}, "
              f"before {row['before_ms']:.3f}, torch ops {row['torch_ops_ms']:.3f}, sample {row['fast_ms']:.3f} ms "
              f"({row['speedup']:.1f}x); engine {row['engine_before_ms']:.3f} -> {row['engine_after_ms']:.3f} ms")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "vocab": args.vocab, "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
        "baseline": args.baseline, "logits": "randn * 3", "clock": "wall (perf_counter), shared 2-core machine",
    }  # fmt: skip
    (RESULTS / "sampling.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    plot(rows, RESULTS / "sampling.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
