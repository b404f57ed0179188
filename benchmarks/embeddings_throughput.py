"""/v1/embeddings throughput (inputs/s) through a real `tnn serve`, at batch 1, 16 and 64 inputs per request: JSON + PNG.

Two models of the shipped model's shape and tokenizer: the shipped causal TNN (mean pooling) and a random-init
bidirectional SKI-TNN encoder (d 192, 4 layers). One client, closed loop, the `openai` SDK. Per round and batch
size, 64 inputs are embedded (64 requests of 1, 4 of 16, 1 of 64), batch sizes interleaved; after a warm-up
round, the median over `--rounds` rounds. Inputs: Shakespeare-like lines of 8-40 tokens.

    python benchmarks/embeddings_throughput.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support (ServerProcess)

from tests.support import ServerProcess  # noqa: E402
from tnn.model import TnnLM, default_model_dir, load  # noqa: E402
from tnn.model.loading import copy_tokenizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (1, 16, 64)
PER_ROUND = 64  # inputs per round and batch size
LINES = [
    "Is this a dagger which I see before me,",
    "The handle toward my hand? Come, let me clutch thee.",
    "Tomorrow, and tomorrow, and tomorrow,",
    "Creeps in this petty pace from day to day",
    "Out, out, brief candle! Life's but a walking shadow, a poor player",
    "Fair is foul, and foul is fair: hover through the fog and filthy air.",
    "Double, double toil and trouble; fire burn and cauldron bubble.",
    "What's done cannot be undone.",
]


def encoder_dir(path: Path) -> Path:
    """A random bidirectional SKI-TNN encoder with the shipped model's shape and tokenizer."""
    shipped = load(default_model_dir()).config
    torch.manual_seed(0)
    model = TnnLM(shipped.replace(operator="ski", causal=False, ssm=None)).eval()
    model.save(path)
    copy_tokenizer(default_model_dir(), path)
    return path


def inputs(count: int, offset: int) -> list[str]:
    return [f"{LINES[(offset + i) % len(LINES)]} ({offset + i})" for i in range(count)]


def one_round(client: openai.OpenAI, batch: int, offset: int) -> float:
    """Seconds to embed PER_ROUND inputs in requests of `batch`."""
    start = time.perf_counter()
    for first in range(0, PER_ROUND, batch):
        result = client.embeddings.create(model="m", input=inputs(batch, offset + first), encoding_format="float")
        assert len(result.data) == batch
    return time.perf_counter() - start


def measure(model_dir: Path, rounds: int) -> dict[str, float]:
    with ServerProcess(model_dir, args=["--served-model-name", "m"]) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)
        for batch in BATCHES:
            one_round(client, batch, 0)  # warm-up
        times: dict[int, list[float]] = {b: [] for b in BATCHES}
        for r in range(rounds):
            for batch in BATCHES:
                times[batch].append(one_round(client, batch, 1000 * (r + 1)))
    return {str(b): PER_ROUND / statistics.median(t) for b, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "embeddings_throughput.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = {"tnn causal (shipped)": default_model_dir(), "ski bidirectional (random)": encoder_dir(Path(tmp))}
        rows = {name: measure(path, args.rounds) for name, path in models.items()}
    for name, row in rows.items():
        print(name, {b: round(v, 1) for b, v in row.items()})  # noqa: T201
    result = {
        "what": "inputs/s through /v1/embeddings, one client, closed loop, median over rounds",
        "rounds": args.rounds,
        "server_threads": 1,
        "inputs_per_s": rows,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in result["inputs_per_s"].items():
        ax.plot([int(b) for b in row], list(row.values()), "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("inputs per request")
    ax.set_ylabel("inputs/s (median)")
    ax.set_title("/v1/embeddings throughput, CPU, 1 server thread")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
