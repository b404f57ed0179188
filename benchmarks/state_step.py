"""Decode step time vs state layout: yesterday's complex64 new-buffer step, the in-place eager step and the fused
(torch.compile'd) step, for etsc-tail and the reduced conversion of the shipped model, against this machine's
memory bandwidth.

For each batch size (interleaved rounds, medians, every ratio from the same run):
- `baseline`: etsc-tail with a complex64 (B, N, D) state per layer and the step main had before the compact
  layout (a new state buffer per layer per step: `poles * state`, `addcmul_`, `.real.sum`);
- `etsc-tail` and `reduced`, each `eager` (in place, `ssm_step`) and `fused` (`ssm_step_fused`).
The whole `TnnLM.step` is timed (embedding, GTU/GLU, logits), on a preallocated pool's `rows(0, B)`.
Bytes moved per step = the state read and written once (2 x state bytes); the ceiling is the bandwidth of an
in-place copy of a 256 MiB preallocated tensor (read + write).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/state_step.py --batch 1 8 32 128

Writes benchmarks/results/state_step.json and .png.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from tnn.model import TnnLM, attach_ssm, default_model_dir, load
from tnn.model.conversion import ReducedOptions
from tnn.model.ssm import SsmParams

RESULTS = Path(__file__).parent / "results"


def old_ssm_step(v: Tensor, state: Tensor, params: SsmParams) -> tuple[Tensor, Tensor]:
    """The step main had before the compact layout: complex (B, N, D) state, one new buffer per step."""
    new_state = params.poles * state  # (B, N, D)
    new_state.addcmul_(params.weights, v[:, None, :].to(state.dtype))
    return new_state.real.sum(1).to(v.dtype), new_state


@torch.inference_mode()
def old_model_step(model: TnnLM, tokens: Tensor, states: list[Tensor]) -> Tensor:
    """TnnLM.step with `old_ssm_step` in every layer; replaces states[i] by the new buffers."""
    x = model._embed(tokens)
    for i, layer in enumerate(model.layers):
        gtu = layer.gtu

        def mix(h: Tensor, i: int = i, gtu=gtu) -> Tensor:  # noqa: ANN001
            params = gtu.tno.ssm
            assert isinstance(params, SsmParams)
            mixed, states[i] = old_ssm_step(gtu.act(gtu.v_proj(h)), states[i], params)
            return gtu._gate(h, mixed)

        x = layer._residual(x, mix)
    return model._logits(x)


def timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second of an in-place copy between two preallocated tensors (read + write counted)."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * src.numel() * 4 / timed(lambda: dst.copy_(src), repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median of all is reported")
    parser.add_argument("--steps", type=int, default=10, help="steps timed per variant per round")
    parser.add_argument("--tolerance", type=float, default=ReducedOptions().tolerance)
    parser.add_argument("--fir-length", type=int, default=ReducedOptions().fir_length)
    parser.add_argument("--max-order", type=int, default=ReducedOptions().max_order)
    parser.add_argument("--no-fused", action="store_true", help="skip the torch.compile'd step")
    parser.add_argument("--out", default=str(RESULTS / "state_step.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    base = load(default_model_dir(), dtype=torch.float64)
    etsc_model = attach_ssm(copy.deepcopy(base), method="etsc-tail").float()
    options = ReducedOptions(tolerance=args.tolerance, max_order=args.max_order, fir_length=args.fir_length)
    start = time.perf_counter()
    reduced_model = attach_ssm(copy.deepcopy(base), method="reduced", reduced=options).float()
    convert_s = time.perf_counter() - start
    for model in (etsc_model, reduced_model):
        for layer in model.layers:
            layer.gtu.tno.ssm = layer.gtu.tno.ssm.to(real_dtype=torch.float32)  # type: ignore[union-attr]
    fused_models = {}
    if not args.no_fused:
        for name, model in (("etsc-tail", etsc_model), ("reduced", reduced_model)):
            fused = copy.deepcopy(model)
            if fused.fuse_step():
                fused_models[name] = fused
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e9:.2f} GB/s; reduced conversion {convert_s:.1f}s", flush=True)

    rows = [
        measure_batch(batch, etsc_model, reduced_model, fused_models, bandwidth, args.rounds, args.steps)
        for batch in args.batch
    ]

    result = {
        "model": "shipped default model (d_model 192, 4 layers, D 576, n 512), float32, 1 thread",
        "reduced_options": vars(options),
        "reduced_modes_per_layer": [layer.gtu.tno.ssm.n_modes for layer in reduced_model.layers],  # type: ignore[union-attr]
        "state_bytes_per_sequence": {
            "etsc-tail": etsc_model.state_bytes_per_sequence(),
            "reduced": reduced_model.state_bytes_per_sequence(),
        },
        "copy_bandwidth_bytes_per_s": bandwidth,
        "fused_available": sorted(fused_models),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    return 0


def measure_batch(
    batch: int,
    etsc_model: TnnLM,
    reduced_model: TnnLM,
    fused_models: dict[str, TnnLM],
    bandwidth: float,
    rounds: int,
    steps: int,
) -> dict[str, object]:
    """Every variant at one batch size, interleaved `rounds` times, `steps` steps each."""
    channels = etsc_model.config.d_inner
    tokens = torch.randint(0, etsc_model.config.vocab_size, (batch,))
    pools = {"etsc-tail": etsc_model.empty_state(batch + 3), "reduced": reduced_model.empty_state(batch + 3)}
    old_states = [
        torch.zeros(batch, layer.gtu.tno.ssm.n_modes, channels, dtype=torch.complex64)  # type: ignore[union-attr]
        for layer in etsc_model.layers
    ]
    variants: dict[str, Callable[[], object]] = {
        "baseline": lambda: old_model_step(etsc_model, tokens, old_states),
        "etsc-tail eager": lambda: etsc_model.step(tokens, pools["etsc-tail"].rows(0, batch)),
        "reduced eager": lambda: reduced_model.step(tokens, pools["reduced"].rows(0, batch)),
    }
    for name, model in fused_models.items():
        variants[f"{name} fused"] = lambda model=model, name=name: model.step(tokens, pools[name].rows(0, batch))
    with torch.inference_mode():
        for fn in variants.values():  # warm-up (and compile)
            fn()
            fn()
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                samples[name].append(timed(fn, steps))
    state_bytes = {
        "baseline": sum(s.numel() * s.element_size() for s in old_states),
        "etsc-tail": pools["etsc-tail"].rows(0, batch).nbytes,
        "reduced": pools["reduced"].rows(0, batch).nbytes,
    }
    baseline_s = statistics.median(samples["baseline"])
    step_ms, fraction, speedup = {}, {}, {}
    for name, values in samples.items():
        seconds = statistics.median(values)
        moved = 2 * state_bytes[name.split(" ")[0]]  # the state read once and written once
        step_ms[name] = 1000 * seconds
        fraction[name] = moved / seconds / bandwidth
        speedup[name] = baseline_s / seconds
    print(
        f"batch {batch:>4}: "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in step_ms.items())
        + " | vs baseline: "
        + ", ".join(f"{k} {v:.1f}x" for k, v in speedup.items()),
        flush=True,
    )
    return {
        "batch": batch,
        "state_bytes": state_bytes,
        "step_ms": step_ms,
        "speedup_vs_baseline": speedup,
        "bandwidth_fraction": fraction,
    }


def plot(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    assert isinstance(rows, list)
    batches = [r["batch"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in rows[0]["step_ms"]:
        ax.plot(batches, [r["step_ms"][name] for r in rows], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("TnnLM.step, ms (median)")
    ax.set_title("Decode step, shipped model, CPU 1 thread")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
