"""`tnn eval DIR --text FILE`: cross-entropy, perplexity and bits per byte of a TNN model directory on a text.

Two paths at each context length (non-overlapping blocks, each from a fresh state): `parallel` is
`model(tokens)` with TNN kernels at every lag; `recurrent` is the converted model (ETSC at the conversion
length, the model's training length unless the directory is already converted), teacher-forced through
`TnnLM.recurrent_logits`, which equals stepping token by token. Past the conversion length the two differ:
that is what the table shows.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from tnn.model.conversion import attach_ssm
from tnn.model.loading import load
from tnn.model.tokenizer import encode, eos_id, load_tokenizer
from tnn.training.evaluate import Score, score_tokens

logger = logging.getLogger(__name__)

DEFAULT_CONTEXTS = (512, 1024, 2048, 4096)


def evaluate_directory(
    model_dir: str | Path,
    text: str,
    *,
    contexts: tuple[int, ...] = DEFAULT_CONTEXTS,
    device: str | torch.device = "cpu",
    max_batch: int = 8,
) -> list[dict[str, float | int | str]]:
    """One row per (path, context): the Score fields plus "path" and the conversion length used."""
    model = load(model_dir, device=device)
    if not model.is_converted:
        attach_ssm(model)
        logger.info(
            "converted with %s at length %d for the recurrent path", model.config.ssm.method, model.config.ssm.length
        )
    assert model.config.ssm is not None  # attach_ssm records it
    tokenizer = load_tokenizer(model_dir)
    ids = torch.tensor([eos_id(tokenizer), *encode(tokenizer, text)], dtype=torch.long)
    n_bytes = len(text.encode("utf-8"))
    paths = {
        "parallel": lambda tokens: model(tokens.to(model.device)),
        "recurrent": lambda tokens: model.recurrent_logits(tokens.to(model.device))[0],
    }
    rows: list[dict[str, float | int | str]] = []
    for context in contexts:
        for name, logits_fn in paths.items():
            score: Score = score_tokens(logits_fn, ids, n_bytes, context=context, max_batch=max_batch)
            rows.append({"path": name, "conversion_length": model.config.ssm.length, **score.to_dict()})
            logger.info("%s context %d: %.4f bits/byte", name, context, score.bits_per_byte)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="a TNN model directory with its tokenizer")
    parser.add_argument("--text", required=True, help="UTF-8 text file to score")
    parser.add_argument(
        "--contexts", type=int, nargs="+", default=list(DEFAULT_CONTEXTS), help="context lengths (tokens)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--max-batch", type=int, default=8, help="blocks scored at once")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    text = Path(args.text).read_text(encoding="utf-8")
    rows = evaluate_directory(
        args.model_dir, text, contexts=tuple(args.contexts), device=device, max_batch=args.max_batch
    )
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))  # noqa: T201 (CLI stdout)
    return 0


def format_table(rows: list[dict[str, float | int | str]]) -> str:
    lines = [f"{'path':<10} {'context':>7} {'tokens':>7} {'loss':>7} {'ppl':>8} {'bits/byte':>9}"]
    for row in rows:
        lines.append(
            f"{row['path']:<10} {row['context']:>7} {row['tokens']:>7} {row['loss']:>7.4f} "
            f"{row['perplexity']:>8.2f} {row['bits_per_byte']:>9.4f}"
        )
    return "\n".join(lines)
