"""Causal TNN, FD-TNN and SKI-TNN LMs converted to recurrences: prefill + step vs the parallel path, up to n
and past n, for every conversion method: JSON.

One random-init LM per operator (same width, depth, seed, conversion length n = train_length; FD freezes its
FFT grid and SKI its sample spacing at n). Teacher-forced recurrent logits (equal to prefill + step, tested)
against the parallel forward on a 4n-token probe of uniform random ids: the max relative logit error over
positions < n (the exactness domain), float64 and float32, and past n (2n, 4n) as convert.verify reports it.

    python benchmarks/variant_conversion.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path
from typing import get_args

import torch

from tnn.convert.verify import past_n_row, probe_tokens, relative_error
from tnn.model import TnnConfig, TnnLM, attach_ssm
from tnn.model.config import SsmMethod

RESULTS = Path(__file__).resolve().parent / "results"
OPERATORS = {"tnn": {}, "fd": {"decay": "none"}, "ski": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--length", type=int, default=256, help="train_length = conversion length n")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--operators", nargs="+", default=list(OPERATORS), choices=list(OPERATORS))
    parser.add_argument("--out", type=Path, default=RESULTS / "variant_conversion.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.length
    tokens = probe_tokens(args.vocab, 4 * n, seed=1)
    rows = []
    for operator in args.operators:
        extra = OPERATORS[operator]
        config = TnnConfig(
            vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers, d_glu=args.d_model, dropout=0.0,
            train_length=n, operator=operator, **extra,  # type: ignore[arg-type]
        )  # fmt: skip
        torch.manual_seed(0)
        model = TnnLM(config).double().eval()
        expected = model(tokens)  # (1, 4n, V) parallel path, the operator's own kernel
        expected32 = model.float()(tokens).double()
        model.double()
        for method in get_args(SsmMethod):
            converted = attach_ssm(copy.deepcopy(model), method=method)
            got, _ = converted.recurrent_logits(tokens)
            got32, _ = attach_ssm(copy.deepcopy(model).float(), method=method).recurrent_logits(tokens[:, :n])
            row = {
                "operator": operator,
                "method": method,
                "modes": converted.config.ssm.modes,  # type: ignore[union-attr]
                "within_n_rel_error_float64": relative_error(got[:, :n], expected[:, :n]),
                "within_n_rel_error_float32": relative_error(got32, expected32[:, :n]),
                "past_n": [
                    past_n_row(method, got[:, : m * n], expected[:, : m * n], tokens[:, : m * n], n).to_dict()
                    for m in (2, 4)
                ],  # fmt: skip
            }
            rows.append(row)
            print(
                json.dumps({k: v for k, v in row.items() if k != "past_n"}),
                [  # noqa: T201
                    (p["length"], f"{p['max_rel_error']:.2e}", f"{p['top1_agreement']:.3f}") for p in row["past_n"]
                ],
            )
    result = {
        "model": f"random init, d={args.d_model}, {args.n_layers} layers, V={args.vocab}, n={n}",
        "probe": f"1 x {4 * n} uniform random token ids",
        "rows": rows,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
