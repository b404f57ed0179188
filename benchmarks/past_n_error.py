"""Past the conversion length: how far each ETSC method's decoding is from the parallel TNN, in float64.

For probes of 2n and 4n tokens: max relative logit error, rms relative error and top-1 agreement past n, and
the next-token loss of both (teacher-forced recurrent logits, equal to prefill + step). Probes are real text
(--text, tokenized with the model directory's tokenizer) or seeded uniform random ids.

    python benchmarks/past_n_error.py --random-init                          # paper widths, 2 layers, n=512
    python benchmarks/past_n_error.py MODEL_DIR --text held_out.txt --batch 4
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import get_args

import torch

from tnn.convert.verify import past_n_comparison, probe_tokens
from tnn.model import TnnConfig, TnnLM, load
from tnn.model.config import SsmMethod

RESULTS = Path(__file__).resolve().parent / "results"


def text_tokens(model_dir: Path, text_file: Path, batch: int, length: int) -> torch.Tensor:
    """(batch, length) consecutive windows of the tokenized text."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text_file.read_text()).ids
    if len(ids) < batch * length:
        raise ValueError(f"{text_file}: {len(ids)} tokens, need {batch * length} for {batch} probes of {length}")
    return torch.tensor(ids[: batch * length]).view(batch, length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, help="model directory or fairseq .pt")
    parser.add_argument("--random-init", action="store_true", help="d=512, 2 layers, V=50264, default init")
    parser.add_argument("--length", type=int, default=None, help="conversion length n (default: train_length)")
    parser.add_argument("--text", type=Path, default=None, help="probe text (default: random token ids)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--name", default=None, help="results file stem (default: from the model)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    if args.random_init:
        torch.manual_seed(0)
        config = TnnConfig(vocab_size=50264, d_model=512, n_layers=2, dropout=0.0, train_length=args.length or 512)
        model = TnnLM(config).double().eval()
        source = "random init, d=512, 2 layers, V=50264"
    elif args.model is not None:
        model = load(args.model, dtype=torch.float64)
        source = str(args.model)
    else:
        parser.error("give a MODEL or --random-init")
    n = args.length or model.config.train_length or 512
    if args.text is not None:
        tokens = text_tokens(args.model, args.text, args.batch, 4 * n)
        probe = f"{args.text.name}: {args.batch} consecutive windows of {4 * n} tokens"
    else:
        tokens = torch.cat([probe_tokens(model.config.vocab_size, 4 * n, seed=1 + i) for i in range(args.batch)])
        probe = f"{args.batch} x {4 * n} uniform random token ids"
    rows = past_n_comparison(model, methods=get_args(SsmMethod), length=n, full_state=False, tokens=tokens)

    print(f"{source}, n = {n}, probe: {probe}")
    print(
        f"{'method':<15} {'tokens':>6}  {'max rel err':>11}  {'rms rel err':>11}  {'top-1':>6}  {'nll par':>8}  {'nll rec':>8}"
    )
    for r in rows:
        print(
            f"{r.method:<15} {r.length:>6}  {r.max_rel_error:>11.2e}  {r.rms_rel_error:>11.2e}  "
            f"{r.top1_agreement:>6.3f}  {r.nll_parallel:>8.4f}  {r.nll_recurrent:>8.4f}"
        )
    result = {
        "source": source,
        "length": n,
        "probe": probe,
        "rows": [r.to_dict() for r in rows],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    name = args.name or ("random_init" if args.random_init else Path(source).stem)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"past_n_{name}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
