"""How the engine should hold running sequences' recurrent state: measured, not guessed.

(a) slots: a preallocated all-slots state; each decode step gathers the running rows, steps, scatters them back;
(b) compact: the running batch is the state itself (`step` returns a new state anyway); a finished row costs one
    `gather` (compaction), a new row fills a hole with `scatter_` or is appended with `cat`.
Prints ms per step for both and the one-off costs of (b), and writes benchmarks/results/state_layout.json.

    .venv/bin/python benchmarks/state_layout.py [--batch 8 32] [--d-model 256 --n-layers 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tnn.model import TnnConfig, TnnLM, TnnState, attach_ssm

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.inference_mode()
def measure(model: TnnLM, batch: int, repeats: int) -> dict[str, float]:
    slots = model.empty_state(batch)
    rows = list(range(batch))
    tokens = torch.zeros(batch, dtype=torch.long)
    compact = model.empty_state(batch)
    one = model.empty_state(1)

    def slots_step() -> None:
        _, new = model.step(tokens, slots.gather(rows))
        slots.scatter_(rows, new)

    def compact_step() -> None:
        model.step(tokens, compact)

    return {
        "batch": batch,
        "state_mib": compact.nbytes / 2**20,
        "slots_step_ms": timed(slots_step, repeats),
        "compact_step_ms": timed(compact_step, repeats),
        "compact_remove_row_ms": timed(lambda: compact.gather(rows[1:]), repeats),
        "compact_fill_hole_ms": timed(lambda: compact.scatter_([0], one), repeats),
        "compact_append_row_ms": timed(lambda: TnnState.cat([compact, one]), repeats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TnnConfig(vocab_size=4096, d_model=args.d_model, n_layers=args.n_layers, d_glu=args.d_model,
                       dropout=0.0, train_length=512)  # fmt: skip
    torch.manual_seed(0)
    model = attach_ssm(TnnLM(config).eval())
    rows = [measure(model, b, args.repeats) for b in args.batch]
    for row in rows:
        print(json.dumps({k: round(v, 3) for k, v in row.items()}))
    RESULTS.mkdir(exist_ok=True)
    out = {"d_model": args.d_model, "n_layers": args.n_layers, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "rows": rows}  # fmt: skip
    (RESULTS / "state_layout.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
