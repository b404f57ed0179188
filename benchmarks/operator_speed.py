"""Token-mixer speed, same run, interleaved: TNN vs FD-TNN (causal) and TNN vs SKI-TNN (bidirectional): JSON + PNG.

Each operator's forward over one sequence of n tokens, kernel construction included (what a training step
pays; the paper's claim: SKI is O(n) and needs no RPE MLP, FD saves the decay and builds the kernel in frequency).
The kernel follows the length, as in the original code. Per n: one warm-up call of each, then `--reps` rounds
that time the operators one after the other (interleaved, so machine load hits all alike); medians and the
ratio TNN time / variant time (> 1: the variant is faster).

    python benchmarks/operator_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from tnn.model import TnnConfig
from tnn.model.mixer import ToeplitzMixer
from tnn.model.tnn import token_mixer

RESULTS = Path(__file__).parent / "results"
PAIRS = {"causal": ("tnn", "fd"), "bidirectional": ("tnn", "ski")}


def build(operator: str, causal: bool, d_model: int) -> ToeplitzMixer:
    """The paper's LM mixer settings (RPE 64 wide, 6 layers; SKI r = 32, 17 taps) at `d_model` x 3 channels."""
    config = TnnConfig(
        vocab_size=1,
        d_model=d_model,
        causal=causal,
        operator=operator,  # type: ignore[arg-type]
        decay="none" if operator == "fd" else "fixed",
        train_length=None,  # the kernel follows each call's length, as in training
        padding_idx=None,
    )
    torch.manual_seed(0)
    return token_mixer(config).eval()


def timed(mixer: ToeplitzMixer, x: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        mixer(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--d-model", type=int, default=64, help="channels D = 3 x d_model (default: 192)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024 * 2**k for k in range(7)])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "operator_speed_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for direction, names in PAIRS.items():
        causal = direction == "causal"
        mixers = {name: build(name, causal, args.d_model) for name in names}
        for n in args.lengths:
            x = torch.randn(1, n, 3 * args.d_model, generator=torch.Generator().manual_seed(n))
            for mixer in mixers.values():
                timed(mixer, x)  # warm-up
            times: dict[str, list[float]] = {name: [] for name in names}
            for _ in range(args.reps):
                for name, mixer in mixers.items():
                    times[name].append(timed(mixer, x))
            medians = {name: statistics.median(t) for name, t in times.items()}
            row = {
                "direction": direction,
                "n": n,
                "median_s": medians,
                "ratio_tnn_over_variant": medians["tnn"] / medians[names[1]],
            }
            rows.append(row)
            print(json.dumps(row))  # noqa: T201 (progress of a script)
    result = {
        "what": "one forward of the token mixer over (1, n, D) float32, kernel construction included",
        "channels": 3 * args.d_model,
        "threads": args.threads,
        "reps": args.reps,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (direction, names) in zip(axes, PAIRS.items(), strict=True):
        rows = [r for r in result["rows"] if r["direction"] == direction]
        for name in names:
            label = f"{name.upper()}-TNN" if name != "tnn" else "TNN"
            ax.loglog([r["n"] for r in rows], [r["median_s"][name] * 1e3 for r in rows], "o-", label=label)
        ax.set_title(f"{direction}: {result['channels']} channels, {result['threads']} thread(s)")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel("forward time, ms (median)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
