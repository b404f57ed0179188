"""Per-token decode latency: the shipped TNN's recurrent step against a matched GPT-2 with a static KV cache.

Both models are the README's pair: the shipped TNN (4 layers x 192, vocabulary 4096) and the GPT-2 that
`tnn train --arch gpt2` builds at the same width, depth and vocabulary with its MLP widened to match the TNN's
parameter count (tnn.training.train.build_model), its position table extended to the longest position measured.
GPT-2 decodes with Hugging Face's StaticCache sized to the position (max_cache_len = P + the tokens timed):
the best static-cache decode transformers offers on CPU without compiling. Neither model is compiled
(eager PyTorch on both sides); the TNN's `--fused` rows (its torch.compile'd SSM update, where available) are
extra rows, not the headline.

One decode step = logits for the next token of every sequence in the batch (no sampling on either side).
At each batch size and position P, the TNN variants and GPT-2 are timed one step each in turn (interleaved,
the CPU is shared), --repeats times after warm-up; medians and ratios come from the same run. The TNN's step
is O(1) in P: its state is a prefill of a short prompt (what P tokens of prefill would leave has the same
shape and cost); GPT-2's cache positions before P hold zeros, which costs the same as real keys.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpt2_decode.py [--positions 128 1024 4096 16384] [--batch 1 8 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib
import torch
from torch import nn

import tnn.model
from tnn.model import TnnLM, attach_ssm
from tnn.model.conversion import DEFAULT_METHOD
from tnn.training.train import TrainConfig, build_model, count_parameters

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WARMUP = 3


def shipped_tnn(method: str, fused: bool) -> TnnLM:
    model = tnn.model.load(tnn.model.default_model_dir())
    model = attach_ssm(model, method=method)  # type: ignore[arg-type]
    if fused:
        model.fuse_step(True)
    return model.eval()


def matched_gpt2(longest: int) -> nn.Module:
    """The parameter-matched GPT-2 of the shipped model's training config, dropout off, positions extended."""
    record = json.loads((tnn.model.default_model_dir() / "training.json").read_text())
    train = TrainConfig(**{**record["train_config"], "arch": "gpt2", "dropout": 0.0})
    model = build_model(train, eos=0, pad=1)
    config = model.config
    config.n_positions = longest
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(config).eval()


class Gpt2Decoder:
    """One GPT-2 decode step at a time at cache positions P, P + 1, ... into a StaticCache of length P + steps."""

    def __init__(self, model: nn.Module, batch: int, position: int, steps: int) -> None:
        from transformers import StaticCache

        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=position + steps)
        self.position = position
        self.tokens = torch.randint(0, model.config.vocab_size, (batch, 1))

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        out = self.model(
            input_ids=self.tokens,
            cache=self.cache,
            cache_position=torch.tensor([self.position]),
            use_cache=True,
        )
        self.position += 1
        return out.logits  # (B, 1, V)


class TnnDecoder:
    """TnnLM.step on a batch whose state is a short prompt's prefill (the step costs the same at any position)."""

    def __init__(self, model: TnnLM, batch: int) -> None:
        self.model = model
        prompt = torch.randint(0, model.config.vocab_size, (1, 16))
        _, state = model.prefill(prompt)
        self.state = state.repeat(batch)
        self.tokens = torch.randint(0, model.config.vocab_size, (batch,))

    def step(self) -> torch.Tensor:
        logits, self.state = self.model.step(self.tokens, self.state)
        return logits  # (B, V)


def measure(decoders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median ms per call of each decoder, called in turn (interleaved), after WARMUP rounds."""
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for i in range(WARMUP + repeats):
        for name, step in decoders.items():
            start = time.perf_counter()
            step()
            if i >= WARMUP:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def plot(rows: list[dict[str, object]], variants: list[str], path: Path) -> None:
    batches = sorted({int(r["batch"]) for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 4), sharey=False)
    for ax, batch in zip(axes if len(batches) > 1 else [axes], batches, strict=True):
        chosen = [r for r in rows if r["batch"] == batch]
        positions = [r["position"] for r in chosen]
        ax.plot(positions, [r["gpt2_ms"] for r in chosen], "o-", label="GPT-2 + StaticCache", color="black")
        for name in variants:
            ax.plot(positions, [r[f"{name}_ms"] for r in chosen], "s--", label=f"TNN {name}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("position")
        ax.set_title(f"batch {batch}")
    (axes[0] if len(batches) > 1 else axes).set_ylabel("ms per decode step (median)")
    (axes[0] if len(batches) > 1 else axes).legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, nargs="+", default=[128, 1024, 4096, 16384])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--methods", nargs="+", default=sorted({DEFAULT_METHOD, "etsc-tail"}))
    parser.add_argument("--fused", action="store_true", help="also time the TNN with its compiled SSM update")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="gpt2_decode")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = WARMUP + args.repeats
    gpt2 = matched_gpt2(max(args.positions) + steps)
    tnns = {method: shipped_tnn(method, fused=False) for method in args.methods}
    if args.fused:
        tnns.update({f"{method} fused": shipped_tnn(method, fused=True) for method in args.methods})
    rows = []
    for batch in args.batch:
        tnn_decoders = {name: TnnDecoder(model, batch) for name, model in tnns.items()}
        for position in args.positions:
            gpt2_decoder = Gpt2Decoder(gpt2, batch, position, steps)
            decoders = {name: d.step for name, d in tnn_decoders.items()} | {"gpt2": gpt2_decoder.step}
            ms = measure(decoders, args.repeats)
            row: dict[str, object] = {"batch": batch, "position": position, "gpt2_ms": ms["gpt2"]}
            for name in tnns:
                row[f"{name}_ms"] = ms[name]
                row[f"{name}_vs_gpt2"] = ms[name] / ms["gpt2"]  # < 1: the TNN is faster
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            del gpt2_decoder
    meta = {
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "compiled": "neither (eager); '<method> fused' rows use the TNN's torch.compile'd SSM update",
        "tnn_parameters": count_parameters(next(iter(tnns.values()))),
        "gpt2_parameters_without_extended_positions": count_parameters(gpt2)
        - (max(args.positions) + steps - 512) * gpt2.config.n_embd,
        "gpt2_config": {k: getattr(gpt2.config, k) for k in ("n_layer", "n_embd", "n_head", "n_inner", "vocab_size")},
        "tnn_state_bytes_per_sequence": {name: m.state_bytes_per_sequence() for name, m in tnns.items()},
        "tnn_conversion": {name: dataclasses.asdict(m.config.ssm) for name, m in tnns.items() if m.config.ssm},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    plot(rows, list(tnns), RESULTS / f"{args.out}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
