"""Decode step of a converted model: the eager `TnnLM.step` against the two compiled steps, the AOTInductor
package and the hand-written native kernel (what `tnn serve` runs on a CPU where it covers the model), and the
sampler on the step's logits, per batch size, on one thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/native_step.py --model-dir DIR [--batch 1 4 16 64]

DIR: a converted model directory (`tnn convert`); default: the shipped model, converted here. The package and the
library come from the cache `tnn serve` uses (built first if missing: minutes for the package). Per batch size,
rounds interleave the steps so that they see the same load (medians of `--rounds` rounds of `--steps` steps each;
the step count shrinks with the batch to keep a round short); the sampler row is `sample` with temperature 0.8 and
top_p 0.95 on the kernel's logits. Writes benchmarks/results/native_step.json and .png.
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
from tnn.model.native_lib import default_cache_dir
from tnn.model.native_step import NativeStep, build_native_step, load_native_step, package_path
from tnn.model.sampling import SamplingParams, sample

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = {
    "eager": "eager step",
    "aoti": "AOTInductor",
    "aoti_autotune": "AOTInductor, max_autotune",
    "kernel": "native kernel",
    "sampler": "sampler",
}


def per_step_ms(fn, steps: int) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return 1e3 * (time.perf_counter() - start) / steps


@torch.inference_mode()
def measure(model: TnnLM, compiled: dict[str, NativeStep], batch: int, rounds: int, steps: int) -> dict[str, float]:
    """Median ms per step of the eager and the compiled steps and of the sampler, rounds interleaved."""
    pool = model.empty_state(batch)
    tokens = torch.randint(0, model.config.vocab_size, (batch,))
    params = [SamplingParams(temperature=0.8, top_p=0.95)] * batch
    generators = [None] * batch
    logits = compiled["kernel"](tokens, pool)
    runs = {
        "eager": lambda: model.step(tokens, pool),
        **{name: (lambda step=step: step(tokens, pool)) for name, step in compiled.items()},
        "sampler": lambda: sample(logits, params, generators),
    }
    for fn in runs.values():
        per_step_ms(fn, 3)  # warm-up
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            timings[name].append(per_step_ms(fn, steps))
    row: dict[str, float] = {"batch": batch}
    for name, values in timings.items():
        row[f"{name}_ms"] = statistics.median(values)
        row[f"{name}_min_ms"] = min(values)
    row["kernel_speedup"] = row["eager_ms"] / row["kernel_ms"]
    row["aoti_speedup"] = row["eager_ms"] / row["aoti_ms"]
    return row


def runs_of(row: dict[str, float]) -> list[str]:
    """The steps a row measured, in STEPS' order."""
    return [name for name in STEPS if f"{name}_ms" in row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    parser.add_argument("--max-batch", type=int, default=256, help="the package's batch range (tnn serve: slots)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=40, help="steps per round at batch 1 (fewer above: >= 2)")
    parser.add_argument(
        "--autotune",
        action="store_true",
        help="also the AOTInductor package built with max_autotune and its C++ GEMM template (minutes)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "native_step.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model: TnnLM = load(args.model_dir or default_model_dir())
    if not model.is_converted:
        attach_ssm(model)
    compiled = {}
    for backend in ("aoti", "kernel"):
        package = package_path(model, default_cache_dir(), max_batch=args.max_batch, backend=backend)
        if not package.exists():
            build_native_step(model, package, max_batch=args.max_batch)
        compiled[backend] = load_native_step(model, package, max_batch=args.max_batch)
    if args.autotune:
        package = package_path(model, default_cache_dir(), max_batch=args.max_batch, backend="aoti")
        tuned = package.with_name(f"{package.stem}-autotune.pt2")
        if not tuned.exists():
            build_native_step(model, tuned, max_batch=args.max_batch, autotune=True)
        compiled["aoti_autotune"] = load_native_step(model, tuned, max_batch=args.max_batch)
    rows = []
    for batch in args.batch:
        row = measure(model, compiled, batch, args.rounds, max(2, args.steps // batch))
        rows.append(row)
        print(f"batch {batch:4d}: " + ", ".join(f"{name} {row[f'{name}_ms']:.3f} ms" for name in runs_of(row)),
              flush=True)  # fmt: skip
    result = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/native_step.py",
        "model_dir": str(args.model_dir or default_model_dir()),
        "state_bytes_per_sequence": model.state_bytes_per_sequence(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": 1,
        "rounds": args.rounds,
        "note": "the machine was shared (other agents' jobs on its 2 cores): medians of interleaved rounds",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    figure, axis = plt.subplots(figsize=(6, 4))
    batches = [r["batch"] for r in rows]
    for name in runs_of(rows[0]):
        axis.plot(batches, [r[f"{name}_ms"] for r in rows], marker="o", label=STEPS[name])
    axis.set(xscale="log", yscale="log", xlabel="batch (sequences)", ylabel="ms per step (1 thread, median)",
             title="Decode step: eager vs compiled (shared machine)")  # fmt: skip
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
