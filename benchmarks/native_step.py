"""Decode step of a converted model: the eager `TnnLM.step` against the compiled step (AOTInductor, what
`tnn serve` runs on a CPU), and the sampler on the step's logits, per batch size, on one thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/native_step.py --model-dir DIR [--batch 1 4 16 64]

DIR: a converted model directory (`tnn convert`); default: the shipped model, converted here. The package comes
from the cache `tnn serve` uses (built first if missing: minutes). Per batch size, rounds interleave the two steps
(medians of `--rounds` rounds of `--steps` steps each); the sampler row is `sample` with temperature 0.8 and top_p
0.95 on the compiled step's logits. Writes benchmarks/results/native_step.json and .png.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from tnn.model import TnnLM, attach_ssm, default_model_dir, load
from tnn.model.native_step import NativeStep, build_native_step, default_cache_dir, load_native_step, package_path
from tnn.model.sampling import SamplingParams, sample

RESULTS = Path(__file__).resolve().parent / "results"


def per_step_ms(fn, steps: int) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return 1e3 * (time.perf_counter() - start) / steps


@torch.inference_mode()
def measure(model: TnnLM, native: NativeStep, batch: int, rounds: int, steps: int) -> dict[str, float]:
    """Median ms per step of the eager and the compiled step and of the sampler, rounds interleaved."""
    pool = model.empty_state(batch)
    tokens = torch.randint(0, model.config.vocab_size, (batch,))
    params = [SamplingParams(temperature=0.8, top_p=0.95)] * batch
    generators = [None] * batch
    logits = native(tokens, pool)
    runs = {
        "eager": lambda: model.step(tokens, pool),
        "compiled": lambda: native(tokens, pool),
        "sampler": lambda: sample(logits, params, generators),
    }
    for fn in runs.values():
        per_step_ms(fn, 5)  # warm-up
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            timings[name].append(per_step_ms(fn, steps))
    row = {"batch": batch, **{f"{name}_ms": statistics.median(values) for name, values in timings.items()}}
    row["speedup"] = row["eager_ms"] / row["compiled_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--max-batch", type=int, default=256, help="the package's batch range (tnn serve: slots)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS / "native_step.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model: TnnLM = load(args.model_dir or default_model_dir())
    if not model.is_converted:
        attach_ssm(model)
    package = package_path(model, default_cache_dir(), max_batch=args.max_batch)
    if not package.exists():
        build_native_step(model, package, max_batch=args.max_batch)
    native = load_native_step(model, package, max_batch=args.max_batch)
    rows = []
    for batch in args.batch:
        row = measure(model, native, batch, args.rounds, args.steps)
        rows.append(row)
        print(f"batch {batch:4d}: eager {row['eager_ms']:.3f} ms, compiled {row['compiled_ms']:.3f} ms "
              f"({row['speedup']:.2f}x), sampler {row['sampler_ms']:.3f} ms")  # fmt: skip
    result = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/native_step.py",
        "model_dir": str(args.model_dir or default_model_dir()),
        "state_bytes_per_sequence": model.state_bytes_per_sequence(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": 1,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    figure, axis = plt.subplots(figsize=(6, 4))
    batches = [r["batch"] for r in rows]
    for key, label in (("eager_ms", "eager step"), ("compiled_ms", "compiled step"), ("sampler_ms", "sampler")):
        axis.plot(batches, [r[key] for r in rows], marker="o", label=label)
    axis.set(xscale="log", yscale="log", xlabel="batch (sequences)", ylabel="ms per step (1 thread)",
             title="Decode step: eager vs compiled (AOTInductor)")  # fmt: skip
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
