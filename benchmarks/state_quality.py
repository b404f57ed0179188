"""Quality vs state size: the parallel TNN against its recurrent forms (etsc-tail, reduced at several tolerances).

- the shipped model: Macbeth bits/byte at each context (non-overlapping blocks from a fresh state, as
  `tnn eval`), parallel and recurrent side by side;
- random models (weights are noise, so bits/byte means nothing): one block of Macbeth tokens per context, and the
  relative logit error of the recurrent form vs the parallel forward (max |diff| / max |parallel|, and rms);
  shaped like the golden fairseq case but with 7 layers (d 32, D 96), and paper width (d 512, D 1536, 7 layers).
State bytes per sequence are float32 (what a float32/bf16 server holds). Each measurement is appended to the
JSON as it finishes (a long run leaves usable partial results).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/state_quality.py --contexts 512 1024 2048 4096 8192

Writes benchmarks/results/state_quality.json and .png (the Pareto plot).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from tnn.model import TnnConfig, TnnLM, attach_ssm, default_model_dir, load
from tnn.model.config import SsmMethod
from tnn.model.conversion import ReducedOptions
from tnn.model.tokenizer import encode, eos_id, load_tokenizer
from tnn.training.corpus import load_splits
from tnn.training.evaluate import score_tokens

RESULTS = Path(__file__).parent / "results"


def variants(
    tolerances: list[float], fir_length: int, etsc_tail: bool
) -> list[tuple[str, SsmMethod, ReducedOptions | None]]:
    rows: list[tuple[str, SsmMethod, ReducedOptions | None]] = [("etsc-tail", "etsc-tail", None)] if etsc_tail else []
    for tolerance in tolerances:
        options = ReducedOptions(tolerance=tolerance, fir_length=fir_length)
        rows.append((f"reduced tol {tolerance:g} h {fir_length}", "reduced", options))
    return rows


def converted(base: TnnLM, method: SsmMethod, options: ReducedOptions | None) -> tuple[TnnLM, float, list[int]]:
    """A float32 copy converted in float64; conversion seconds; modes per layer."""
    model = copy.deepcopy(base).double()
    start = time.perf_counter()
    attach_ssm(model, method=method, reduced=options)
    seconds = time.perf_counter() - start
    single = model.float()
    for layer in single.layers:
        layer.gtu.tno.ssm = layer.gtu.tno.ssm.to(real_dtype=torch.float32)  # type: ignore[union-attr]
    return single, seconds, [layer.gtu.tno.ssm.n_modes for layer in single.layers]  # type: ignore[union-attr]


def random_model(name: str, vocab: int) -> TnnLM:
    torch.manual_seed(0)
    if name == "golden-shaped 7 layers":
        config = TnnConfig(vocab_size=vocab, d_model=32, n_layers=7, d_glu=32, d_rpe=16, n_rpe_layers=2, dropout=0.0)
    else:  # paper width: the defaults (d 512, D 1536, 7 layers, rpe 64 x 6)
        config = TnnConfig(vocab_size=vocab, dropout=0.0)
    return TnnLM(config).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--tolerances", type=float, nargs="+", default=[5e-2, 2e-2, 1e-2])
    parser.add_argument("--fir-length", type=int, default=ReducedOptions().fir_length)
    parser.add_argument("--models", nargs="+", default=["shipped", "golden-shaped 7 layers", "paper width"])
    parser.add_argument("--no-parallel", action="store_true", help="skip the shipped model's parallel rows")
    parser.add_argument("--no-etsc", action="store_true", help="skip the etsc-tail rows")
    parser.add_argument("--out", default=str(RESULTS / "state_quality.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    directory = default_model_dir()
    tokenizer = load_tokenizer(directory)
    text = load_splits().test
    ids = torch.tensor([eos_id(tokenizer), *encode(tokenizer, text)], dtype=torch.long)
    n_bytes = len(text.encode("utf-8"))
    result: dict[str, object] = {"contexts": args.contexts, "rows": []}
    rows: list[dict[str, object]] = result["rows"]  # type: ignore[assignment]

    def record(row: dict[str, object]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    with torch.inference_mode():
        for model_name in args.models:
            base = load(directory) if model_name == "shipped" else random_model(model_name, 4096)
            blocks = {c: ids[: c + 1] for c in args.contexts}  # random models: one block per context
            references = {}
            if model_name == "shipped" and not args.no_parallel:
                for c in args.contexts:
                    score = score_tokens(base, ids, n_bytes, context=c, max_batch=4)
                    record(
                        {"model": model_name, "path": "parallel", "context": c, "bits_per_byte": score.bits_per_byte}
                    )
            elif model_name != "shipped":
                references = {c: base(blocks[c][None, :-1]).double() for c in args.contexts}
            for label, method, options in variants(args.tolerances, args.fir_length, not args.no_etsc):
                model, seconds, modes = converted(base, method, options)
                state_bytes = model.state_bytes_per_sequence()
                for c in args.contexts:
                    row: dict[str, object] = {
                        "model": model_name,
                        "path": label,
                        "context": c,
                        "state_bytes_per_sequence": state_bytes,
                        "modes_per_layer": modes,
                        "convert_s": seconds,
                    }
                    if model_name == "shipped":
                        fn = lambda t, model=model: model.recurrent_logits(t)[0]  # noqa: E731
                        row["bits_per_byte"] = score_tokens(fn, ids, n_bytes, context=c, max_batch=4).bits_per_byte
                    else:
                        got = model.recurrent_logits(blocks[c][None, :-1])[0].double()
                        expected = references[c]
                        row["max_rel_logit_error"] = ((got - expected).abs().max() / expected.abs().max()).item()
                        row["rms_rel_logit_error"] = ((got - expected).norm() / expected.norm()).item()
                    record(row)
    plot(result, out.with_suffix(".png"))
    return 0


def plot(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["model"] == "shipped"]  # type: ignore[union-attr, index]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    parallel = {r["context"]: r["bits_per_byte"] for r in rows if r["path"] == "parallel"}
    for context in sorted({r["context"] for r in rows}):
        points = sorted(
            (r["state_bytes_per_sequence"], r["bits_per_byte"] - parallel[context])
            for r in rows
            if r["path"] != "parallel" and r["context"] == context and context in parallel
        )
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"context {context}")
    ax.axhline(0.002, color="grey", linestyle="--", linewidth=1, label="+0.002 bar")
    ax.set_xscale("log")
    ax.set_xlabel("state bytes per sequence (float32)")
    ax.set_ylabel("recurrent - parallel bits/byte (Macbeth)")
    ax.set_title("Shipped model: state size vs quality")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
