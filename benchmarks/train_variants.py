"""TNN vs FD-TNN vs causal SKI-TNN trained side by side on one identical, reduced budget: JSON + PNG.

Same corpus, tokenizer (the shipped model's), model size, batch, sequence length, schedule and seed as the shipped
default model; `--steps` (default the shipped 600; warm-up scaled with it) sets the budget, identical for every
variant. Runs one after the other in this process, on `--threads` threads (600 steps took 17-23 min per model on
one free core of the 2-core CPU); each run's validation/test bits/byte and training tokens/s come from its
training.json.

    python benchmarks/train_variants.py --steps 600 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import tempfile
from pathlib import Path

import torch

from tnn.model.default import default_model_dir
from tnn.training.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
OPERATORS = ("tnn", "fd", "ski")


def shipped_config() -> TrainConfig:
    """The shipped default model's training configuration (model/default_model/training.json)."""
    record = json.loads((default_model_dir() / "training.json").read_text())
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in record["train_config"].items() if k in fields})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=shipped_config().max_steps)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "train_variants.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    shipped = shipped_config()
    budget = dataclasses.replace(
        shipped,
        max_steps=args.steps,
        warmup_steps=max(1, shipped.warmup_steps * args.steps // shipped.max_steps),
        eval_every=args.steps + 1,  # no mid-run evaluation: validation and test are measured once at the end
        checkpoint_every=args.steps,
        minutes=None,
    )
    runs = {}
    for operator in OPERATORS:
        config = dataclasses.replace(budget, operator=operator)
        with tempfile.TemporaryDirectory() as out:
            record = train(config, out, tokenizer_dir=default_model_dir(), progress=False)
        runs[operator] = {
            "parameters": record["parameters"],
            "steps": record["steps"],
            "tokens_seen": record["tokens_seen"],
            "train_tokens_per_s": record["train_tokens_per_s"],
            "wall_time_s": record["wall_time_s"],
            "validation_bits_per_byte": record["validation"]["bits_per_byte"],
            "test_bits_per_byte": record["test"]["bits_per_byte"],
            "history": record["history"],
        }
        logging.info("%s: %s", operator, {k: v for k, v in runs[operator].items() if k != "history"})
    result = {
        "budget": dataclasses.asdict(budget),
        "shipped_steps": shipped.max_steps,
        "threads": args.threads,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "runs": runs,
        "tokens_per_s_ratio_vs_tnn": {
            op: runs[op]["train_tokens_per_s"] / runs["tnn"]["train_tokens_per_s"] for op in OPERATORS
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(result["runs"])
    runs = [result["runs"][n] for n in names]
    x = range(len(names))
    left.bar([i - 0.2 for i in x], [r["validation_bits_per_byte"] for r in runs], 0.4, label="validation")
    left.bar([i + 0.2 for i in x], [r["test_bits_per_byte"] for r in runs], 0.4, label="test")
    left.set_xticks(list(x), names)
    left.set_ylabel("bits/byte (lower is better)")
    left.set_ylim(bottom=min(r["validation_bits_per_byte"] for r in runs) * 0.9)
    left.legend()
    right.bar(list(x), [r["train_tokens_per_s"] for r in runs])
    right.set_xticks(list(x), names)
    right.set_ylabel("training tokens/s")
    fig.suptitle(
        f"same budget: {result['budget']['max_steps']} steps x {result['budget']['batch_size'] * result['budget']['seq_len']} tokens"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
