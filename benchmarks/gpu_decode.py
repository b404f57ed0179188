"""The GPU numbers of the serving step: decode latency against a matched GPT-2, bandwidth, prefill throughput.

One run on one device (benchmarks/gpu_check.sh runs it on a CUDA machine; --cpu-smoke runs the whole pipeline on
the CPU with tiny sizes so that the script is tested where no GPU is):

1. Decode: per-token latency of the server's decode step (tnn.server.decode_graphs.DecodeStep over a slot pool,
   exactly what the engine runs) at every batch size and position, variants
     eager          the eager step (what --enforce-eager and the CPU serve),
     graphs         the step replayed from CUDA graphs (the server's default on CUDA),
     graphs fused   the same with the torch.compile'd SSM update (--fused-step),
   against the parameter-matched GPT-2 decoding into a Hugging Face StaticCache sized to the position (builders
   imported from benchmarks/gpt2_decode.py; same weights dtype). Every call is synchronised (a server reads the
   tokens back every step); variants are timed in turn (interleaved), medians after warm-up. The TNN's step does
   not depend on the position; it is timed at each position anyway, in the same rounds as GPT-2.
2. Bandwidth: the bytes one TNN step must move (every weight once, the running rows' state read and written)
   over its median time, as a fraction of the device's measured copy bandwidth (a large tensor copied, read +
   write bytes over the median time).
3. Prefill: tokens/s of `TnnLM.prefill` on one prompt of each length.

    .venv/bin/python benchmarks/gpu_decode.py --device cuda        # what gpu_check.sh runs
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu_decode.py --cpu-smoke --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib
import torch
from torch import nn

import tnn.model
from tnn.model import TnnLM, attach_ssm
from tnn.model.conversion import DEFAULT_METHOD
from tnn.server.decode_graphs import DecodeStep
from tnn.training.train import count_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt2_decode import Gpt2Decoder, matched_gpt2  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gpu"
WARMUP = 3
COPY_BYTES = {"cuda": 1 << 30, "cpu": 64 << 20}  # the bandwidth probe's tensor


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median ms of `fn` (synchronised) after WARMUP calls."""
    times = []
    for i in range(WARMUP + repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def copy_bandwidth(device: torch.device, repeats: int) -> float:
    """Bytes/s of a large device-to-device copy (read + write)."""
    source = torch.empty(COPY_BYTES[device.type] // 4, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    ms = timed_ms(lambda: target.copy_(source), device, repeats)
    return 2 * source.numel() * 4 / (ms / 1000)


def load_tnn(device: torch.device, dtype: torch.dtype, fused: bool) -> TnnLM:
    model = attach_ssm(tnn.model.load(tnn.model.default_model_dir(), device=device, dtype=dtype), method=DEFAULT_METHOD)
    model.fuse_step(fused)
    return model.eval()


class TnnStep:
    """The engine's decode step over rows [0, B) of a pool of B slots holding a short prompt's prefill."""

    def __init__(self, model: TnnLM, batch: int, *, graphs: bool) -> None:
        generator = torch.Generator().manual_seed(0)
        vocab = model.config.vocab_size
        _, state = model.prefill(torch.randint(0, vocab, (1, 16), generator=generator).to(model.device))
        pool = model.empty_state(batch)
        self.step = DecodeStep(model, pool, use_graphs=graphs, max_batch=batch)
        self.step.capture()  # no-op when eager; overwrites the pool, which is filled after it
        pool.copy_rows_(0, state.repeat(batch))
        self.tokens = torch.randint(0, vocab, (batch,), generator=generator).tolist()

    def __call__(self) -> torch.Tensor:
        return self.step(self.tokens)  # (B, V)


class DeviceGpt2Decoder(Gpt2Decoder):
    """gpt2_decode's StaticCache decoder with its inputs on the model's device."""

    def __init__(self, model: nn.Module, batch: int, position: int, steps: int) -> None:
        super().__init__(model, batch, position, steps)
        self.device = next(model.parameters()).device
        self.tokens = self.tokens.to(self.device)

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        out = self.model(
            input_ids=self.tokens,
            cache=self.cache,
            cache_position=torch.full((1,), self.position, device=self.device),
            use_cache=True,
        )
        self.position += 1
        return out.logits  # (B, 1, V)


def step_bytes(model: TnnLM, batch: int) -> int:
    """Bytes one decode step must move: every weight once, the running rows' state read and written."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + 2 * batch * model.state_bytes_per_sequence()


def measure_decode(
    variants: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, float | str]:
    """Median ms of each variant, timed in turn (interleaved); a variant that fails (OOM) reports why."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    failed: dict[str, str] = {}
    for i in range(WARMUP + repeats):
        for name, fn in variants.items():
            if name in failed:
                continue
            try:
                synchronize(device)
                start = time.perf_counter()
                fn()
                synchronize(device)
            except torch.OutOfMemoryError as exc:
                failed[name] = f"out of memory: {str(exc).splitlines()[0]}"
                continue
            if i >= WARMUP:
                times[name].append(time.perf_counter() - start)
    return {name: failed.get(name) or 1000 * statistics.median(times[name]) for name in variants}


def decode_rows(args: argparse.Namespace, models: dict[str, TnnLM], dtype: torch.dtype, write: Callable[[], None],
                rows: list[dict[str, object]]) -> None:  # fmt: skip
    """One row per (batch, position): each variant's median ms (and tokens/s, ratio to GPT-2), written as it goes."""
    device = models["eager"].device
    steps = WARMUP + args.repeats
    gpt2 = matched_gpt2(max(args.positions) + steps).to(device=device, dtype=dtype)
    for batch in args.batch:
        tnn_steps = {name: TnnStep(model, batch, graphs=name != "eager") for name, model in models.items()}
        for position in args.positions:
            try:
                gpt2_step: Callable[[], object] = DeviceGpt2Decoder(gpt2, batch, position, steps).step
            except torch.OutOfMemoryError:
                gpt2_step = _out_of_memory
            ms = measure_decode({**tnn_steps, "gpt2": gpt2_step}, device, args.repeats)
            row: dict[str, object] = {"batch": batch, "position": position, "gpt2_ms": ms["gpt2"]}
            for name in models:
                row[f"{name}_ms"] = ms[name]
                if isinstance(ms[name], float):
                    row[f"{name}_tokens_per_s"] = batch / (ms[name] / 1000)
                    if isinstance(ms["gpt2"], float):
                        row[f"{name}_vs_gpt2"] = ms[name] / ms["gpt2"]  # < 1: the TNN is faster
            if isinstance(ms["gpt2"], float):
                row["gpt2_tokens_per_s"] = batch / (ms["gpt2"] / 1000)
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            write()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del tnn_steps


def _out_of_memory() -> None:
    raise torch.OutOfMemoryError("the StaticCache did not fit")


def bandwidth_rows(args: argparse.Namespace, model: TnnLM, rows: list[dict[str, object]]) -> dict[str, object]:
    """Achieved bytes/s of the server's step (graphs on CUDA, eager on CPU) per batch, against copy bandwidth."""
    device = model.device
    copy = copy_bandwidth(device, args.repeats)
    best = "graphs" if device.type == "cuda" else "eager"
    per_batch = []
    for batch in args.batch:
        ms = [r[f"{best}_ms"] for r in rows if r["batch"] == batch and isinstance(r.get(f"{best}_ms"), float)]
        if not ms:
            continue
        step_ms = statistics.median(ms)  # type: ignore[arg-type]
        moved = step_bytes(model, batch)
        achieved = moved / (step_ms / 1000)
        per_batch.append({"batch": batch, "variant": best, "step_ms": step_ms, "bytes_per_step": moved,
                          "bytes_per_s": achieved, "fraction_of_copy_bandwidth": achieved / copy})  # fmt: skip
    return {"copy_bytes_per_s": copy, "rows": per_batch}


def prefill_rows(args: argparse.Namespace, model: TnnLM) -> list[dict[str, object]]:
    device = model.device
    vocab = model.config.vocab_size
    rows: list[dict[str, object]] = []
    for length in args.prefill_lengths:
        prompt = torch.randint(0, vocab, (1, length), device=device)
        try:
            with torch.inference_mode():
                ms = timed_ms(lambda p=prompt: model.prefill(p), device, max(1, args.repeats // 3))
        except torch.OutOfMemoryError as exc:
            rows.append({"length": length, "error": f"out of memory: {str(exc).splitlines()[0]}"})
            continue
        rows.append({"length": length, "ms": ms, "tokens_per_s": length / (ms / 1000)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(results: dict[str, object], path: Path) -> None:
    rows: list[dict[str, object]] = results["decode"]  # type: ignore[assignment]
    batches = sorted({int(r["batch"]) for r in rows})  # type: ignore[call-overload]
    variants: list[str] = results["variants"]  # type: ignore[assignment]
    fig, axes = plt.subplots(1, len(batches) + 1, figsize=(4 * (len(batches) + 1), 3.6), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=False):
        chosen = [r for r in rows if r["batch"] == batch]
        for name, style in [("gpt2", "o-")] + [(v, "s--") for v in variants]:
            points = [(r["position"], r[f"{name}_ms"]) for r in chosen if isinstance(r.get(f"{name}_ms"), float)]
            label = "GPT-2 + StaticCache" if name == "gpt2" else f"TNN {name}"
            ax.plot([p for p, _ in points], [ms for _, ms in points], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set(yscale="log", xlabel="position", title=f"batch {batch}")
    axes[0][0].set_ylabel("ms per decode step (median)")
    axes[0][0].legend(fontsize=7)
    prefill = [r for r in results["prefill"] if "tokens_per_s" in r]  # type: ignore[attr-defined]
    ax = axes[0][-1]
    ax.plot([r["length"] for r in prefill], [r["tokens_per_s"] for r in prefill], "o-")
    ax.set_xscale("log", base=2)
    ax.set(yscale="log", xlabel="prompt tokens", title="TNN prefill tokens/s")
    fig.suptitle(f"tnn-serve decode and prefill on {results['device_name']} ({results['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="weights dtype of both models (default: bfloat16 on CUDA)")
    parser.add_argument("--positions", type=int, nargs="+", default=[128, 1024, 4096, 16384, 32768])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--prefill-lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cpu-smoke", action="store_true", help="CPU, tiny sizes: tests the pipeline, not speed")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.device, args.positions, args.batch, args.prefill_lengths = "cpu", [128, 256], [1, 4], [256, 1024]
        args.repeats = min(args.repeats, 3)
        torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device (use --cpu-smoke to test the pipeline)")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_smoke": args.cpu_smoke,
        "dtype": str(dtype).removeprefix("torch."),
        "state_dtype": "float32",
        "torch": torch.__version__,
        "repeats": args.repeats,
        "variants": ["eager", "graphs", "graphs fused"] if device.type == "cuda" else ["eager"],
        "decode": [],
        "bandwidth": None,
        "prefill": [],
    }
    json_path = args.out / "gpu_decode.json"

    def write() -> None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")

    model = load_tnn(device, dtype, fused=False)
    models = {"eager": model}
    if device.type == "cuda":
        models |= {"graphs": model, "graphs fused": load_tnn(device, dtype, fused=True)}
    results["tnn_parameters"] = count_parameters(model)
    results["tnn_state_bytes_per_sequence"] = model.state_bytes_per_sequence()
    decode: list[dict[str, object]] = results["decode"]  # type: ignore[assignment]
    decode_rows(args, models, dtype, write, decode)
    results["bandwidth"] = bandwidth_rows(args, model, decode)
    write()
    results["prefill"] = prefill_rows(args, model)
    write()
    plot(results, args.out / "gpu_decode.png")
    print(f"wrote {json_path} and {args.out / 'gpu_decode.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
