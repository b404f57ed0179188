"""Per-token decode latency vs context position, and prefill vs stepping a prompt: JSON + PNG.

Three decoders on the same model in the same run, each producing the next token's logits at context position P:
  (a) etsc:  TnnLM.step on the ETSC recurrent state: O(1) in P.
  (b) fft:   the original way to generate with a TNN: recompute the causal FFT forward over the whole prefix
             (P + 1 tokens) for every new token; only the last position is projected to the vocabulary.
  (c) cache: keep every layer's Toeplitz input v for all past tokens and compute o_t = sum_k a_k v_{t-k} as one
             O(P) dot product per layer (the TNN coefficients a_k are computed once for all lags).
Position P is reached by prefilling (a) in chunks and by one forward over the prefix for (b)/(c); then a few
warm-up tokens and the timed tokens (teacher-forced, so all three see the same text; (a) and (c) alternate token by token). The first timed logits of
(a) and (c) are compared with (b) as a sanity check (equal below n; past n, (a) is ETSC's kernel, not the TNN's).

Prefill: TnnLM.prefill (FFT path + state by FFT) vs stepping the prompt token by token from the empty state
(the layers' recurrent step only, no vocabulary projection for the prompt tokens).
Stepping long prompts is timed on the first --max-stepped tokens and extrapolated linearly (each step costs
the same, which is what (a) shows); the JSON says when.

    python benchmarks/decode_latency.py --threads 1    # CPU, d=512, 2 layers, n=512 (the paper's widths)
    python benchmarks/decode_latency.py --device cuda  # GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

from tnn.model import TnnConfig, TnnLM, TnnState, attach_ssm
from tnn.model.tnn import TnnBlock

T = TypeVar("T")
DOT_BLOCK = 1024  # rows per block of decoder (c)'s dot product
RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """(seconds, result) of one call, with the device synchronised around it."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def relative_error(got: Tensor, expected: Tensor) -> float:
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


class CachedToeplitz:
    """Decoder (c): per layer a growing cache of the Toeplitz inputs v (P, D) and one O(P) dot product per token."""

    def __init__(self, model: TnnLM, capacity: int) -> None:
        self.model = model
        self.length = 0
        tnos = [layer.gtu.tno for layer in model.layers]
        dtype = model.dtype
        # coefficients a_k for every lag, reversed so that a dot product with cache[:t+1] is sum_k a_k v_{t-k}
        self.coef_reversed = [tno.coefficients(capacity, torch.float32)[0].to(dtype).flip(0) for tno in tnos]
        self.cache = [torch.zeros(capacity, model.config.d_inner, dtype=dtype, device=model.device) for _ in tnos]
        self.capacity = capacity

    def fill(self, inputs: list[Tensor]) -> None:
        """Start from the Toeplitz inputs (P, D) of each layer over a prefix (captured from a forward pass)."""
        self.length = inputs[0].shape[0]
        for cache, v in zip(self.cache, inputs, strict=True):
            cache[: self.length] = v

    @torch.inference_mode()
    def step(self, token: Tensor) -> Tensor:
        """token (1,) -> logits (1, V)."""
        t = self.length
        x = self.model._embed(token)  # (1, d)
        for i, layer in enumerate(self.model.layers):
            x = self._layer_step(layer, i, x, t)
        self.length += 1
        return self.model._logits(x)

    def _layer_step(self, layer: TnnBlock, i: int, x: Tensor, t: int) -> Tensor:
        gtu = layer.gtu

        def mix(h: Tensor) -> Tensor:  # h (1, d)
            v = gtu.act(gtu.v_proj(h))  # (1, D)
            self.cache[i][t] = v[0]
            window = self.cache[i][: t + 1]  # (t+1, D): v_0 .. v_t
            coef = self.coef_reversed[i][self.capacity - t - 1 :]  # (t+1, D): a_t .. a_0
            mixed = torch.zeros(1, window.shape[1], dtype=window.dtype, device=window.device)  # (1, D)
            for start in range(0, t + 1, DOT_BLOCK):  # blocks keep the product in cache: 8x faster than one pass
                mixed += (coef[start : start + DOT_BLOCK] * window[start : start + DOT_BLOCK]).sum(0, keepdim=True)
            return gtu._gate(h, mixed)

        return layer._residual(x, mix)


def capture_toeplitz_inputs(model: TnnLM, tokens: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Decoder (b) for one token: hidden states over the whole prefix, logits of the last position only.
    Also returns each layer's Toeplitz input v (L, D), captured with forward hooks (for decoder (c))."""
    captured: list[Tensor] = []
    hooks = [
        layer.gtu.tno.register_forward_hook(lambda _m, args, _out: captured.append(args[0][0]))
        for layer in model.layers
    ]
    try:
        logits = fft_next_logits(model, tokens)
    finally:
        for hook in hooks:
            hook.remove()
    return logits, captured


@torch.inference_mode()
def fft_next_logits(model: TnnLM, tokens: Tensor) -> Tensor:
    """tokens (1, P+1) -> logits (1, V) of the last position, recomputing every layer over the prefix."""
    x = model._embed(tokens)
    for layer in model.layers:
        x = layer(x)
    return model._logits(x[:, -1])


def decode_latency(
    model: TnnLM, tokens: Tensor, positions: list[int], args: argparse.Namespace, device: torch.device
) -> list[dict[str, object]]:
    rows = []
    state: TnnState | None = None
    done = 0
    cached = CachedToeplitz(model, max(positions) + args.steps + 8)
    for position in positions:
        # (a) continue the prefill from the previous position's state
        _, state = model.prefill(tokens[:, done:position], state, chunk_size=4096)
        done = position

        # (b) recompute the forward over the prefix for each token; its first call also fills (c)'s cache
        slow_steps = max(1, args.slow_steps if position <= 4096 else args.slow_steps // 2 if position <= 16384 else 1)
        b_times, b_first = [], None
        for i in range(1 + slow_steps):
            prefix = tokens[:, : position + i + 1]
            if i == 0:
                b_first, inputs = capture_toeplitz_inputs(model, prefix)  # warm-up call
                cached.fill([v[:position] for v in inputs])
                del inputs
            else:
                b_times.append(timed(lambda prefix=prefix: fft_next_logits(model, prefix), device)[0])

        # (a) ETSC step and (c) cached O(P) dot product, interleaved token by token so both see the same load
        step_state = state
        a_times, c_times, a_first, c_first = [], [], None, None
        for i in range(args.warmup + args.steps):
            token, current = tokens[:, position + i], step_state
            a_seconds, (a_logits, step_state) = timed(
                lambda token=token, current=current: model.step(token, current), device
            )
            c_seconds, c_logits = timed(lambda token=token: cached.step(token), device)
            if i == 0:
                a_first, c_first = a_logits, c_logits
            if i >= args.warmup:
                a_times.append(a_seconds)
                c_times.append(c_seconds)

        assert a_first is not None and b_first is not None and c_first is not None
        row = {
            "position": position,
            "etsc_ms": 1e3 * statistics.median(a_times),
            "fft_recompute_ms": 1e3 * statistics.median(b_times),
            "cached_toeplitz_ms": 1e3 * statistics.median(c_times),
            "timed_tokens": {"etsc": len(a_times), "fft_recompute": len(b_times), "cached_toeplitz": len(c_times)},
            "rel_diff_vs_fft": {"etsc": relative_error(a_first, b_first), "cached": relative_error(c_first, b_first)},
        }
        row["ratio_fft_over_etsc"] = row["fft_recompute_ms"] / row["etsc_ms"]  # type: ignore[operator]
        row["ratio_cached_over_etsc"] = row["cached_toeplitz_ms"] / row["etsc_ms"]  # type: ignore[operator]
        print(
            f"P={position:>6}  etsc {row['etsc_ms']:8.2f} ms  fft {row['fft_recompute_ms']:10.1f} ms  "
            f"cache {row['cached_toeplitz_ms']:8.2f} ms  (x{row['ratio_fft_over_etsc']:.0f}, "
            f"x{row['ratio_cached_over_etsc']:.1f})  diff a/b {row['rel_diff_vs_fft']['etsc']:.1e} "  # type: ignore[index]
            f"c/b {row['rel_diff_vs_fft']['cached']:.1e}",  # type: ignore[index]
            flush=True,
        )
        rows.append(row)
    return rows


@torch.inference_mode()
def step_state_only(model: TnnLM, token: Tensor, state: TnnState) -> TnnState:
    """TnnLM.step without the vocabulary projection (a prompt needs only the state): the fair baseline.
    Updates `state` in place and returns it."""
    x = model._embed(token)  # (1, d)
    for layer, layer_state in zip(model.layers, state.layers, strict=True):
        x, _ = layer.step(x, layer_state)
    return state


def prefill_vs_stepping(
    model: TnnLM, tokens: Tensor, prompts: list[int], args: argparse.Namespace, device: torch.device
) -> list[dict[str, object]]:
    rows = []
    model.prefill(tokens[:, :64])  # warm-up
    for length in prompts:
        prompt = tokens[:, :length]
        prefill_s = min(
            timed(lambda prompt=prompt: model.prefill(prompt, chunk_size=4096), device)[0] for _ in range(2)
        )
        stepped = min(length, args.max_stepped)

        def step_through(stepped: int = stepped) -> None:
            state = model.empty_state(1)
            for i in range(stepped):
                state = step_state_only(model, tokens[:, i], state)

        step_s = timed(step_through, device)[0] * length / stepped
        row = {
            "prompt_tokens": length,
            "prefill_s": prefill_s,
            "stepping_s": step_s,
            "stepping_extrapolated_from": stepped if stepped < length else None,
            "speedup": step_s / prefill_s,
            "prefill_tokens_per_s": length / prefill_s,
        }
        print(
            f"prompt {length:>6}: prefill {prefill_s:8.3f} s  stepping {step_s:8.2f} s"
            f"{' (extrapolated)' if stepped < length else ''}  speedup x{row['speedup']:.0f}",
            flush=True,
        )
        rows.append(row)
    return rows


def plot(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["decode"]  # type: ignore[assignment]
    positions = [r["position"] for r in rows]  # type: ignore[index]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, label in [
        ("etsc_ms", "(a) ETSC recurrent step"),
        ("fft_recompute_ms", "(b) recompute causal FFT over prefix"),
        ("cached_toeplitz_ms", "(c) cached O(t) Toeplitz dot product"),
    ]:
        left.plot(positions, [r[key] for r in rows], marker="o", label=label)  # type: ignore[index]
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("context position (tokens)")
    left.set_ylabel("per-token latency (ms, median)")
    left.set_title(f"decode latency, {result['model_desc']}, {result['device_name']}")
    left.legend()
    left.grid(True, which="both", alpha=0.3)
    prefill = result["prefill"]  # type: ignore[assignment]
    labels = [str(r["prompt_tokens"]) for r in prefill]  # type: ignore[index]
    xs = range(len(labels))
    right.bar([x - 0.2 for x in xs], [r["prefill_s"] for r in prefill], width=0.4, label="prefill (FFT + state)")  # type: ignore[index]
    right.bar([x + 0.2 for x in xs], [r["stepping_s"] for r in prefill], width=0.4, label="step token by token")  # type: ignore[index]
    right.set_xticks(list(xs), labels)
    right.set_yscale("log")
    right.set_xlabel("prompt tokens")
    right.set_ylabel("seconds")
    right.set_title("prompt processing")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=50264)
    parser.add_argument("--length", type=int, default=512, help="conversion length n")
    parser.add_argument("--method", default="etsc-tail")
    parser.add_argument("--positions", type=int, nargs="+", default=[128, 1024, 4096, 16384, 65536])
    parser.add_argument("--prompts", type=int, nargs="+", default=[512, 4096, 32768])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="timed tokens for (a) and (c)")
    parser.add_argument("--slow-steps", type=int, default=6, help="timed tokens for (b) up to 4K (fewer beyond)")
    parser.add_argument("--max-stepped", type=int, default=4096, help="prompt tokens stepped before extrapolating")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = TnnConfig(
        vocab_size=args.vocab_size, d_model=args.d_model, n_layers=args.n_layers, dropout=0.0, train_length=args.length
    )
    model = attach_ssm(TnnLM(config).to(device).eval(), method=args.method)
    total = max(max(args.positions) + args.warmup + args.steps + 8, max(args.prompts))
    tokens = torch.randint(0, args.vocab_size, (1, total), generator=torch.Generator().manual_seed(1)).to(device)
    params = sum(p.numel() for p in model.parameters())
    desc = f"d={args.d_model}, {args.n_layers} layers, D={config.d_inner}, n={args.length}, V={args.vocab_size}"
    print(
        f"model: {desc}, {params / 1e6:.1f}M params, float32, state {model.state_bytes_per_sequence() / 2**20:.1f} MiB"
    )

    result: dict[str, object] = {
        "model_desc": desc,
        "config": config.to_dict(),
        "parameters": params,
        "dtype": "float32",
        "state_bytes_per_sequence": model.state_bytes_per_sequence(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
    }
    result["decode"] = decode_latency(model, tokens, args.positions, args, device)
    result["prefill"] = prefill_vs_stepping(model, tokens, args.prompts, args, device)
    if device.type == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"decode_latency_{args.device}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json and .png")


if __name__ == "__main__":
    main()
