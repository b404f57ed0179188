"""`tnn attach-tokenizer MODEL_DIR TOKENIZER_DIR [--fairseq-dict dict.txt]`: add a tokenizer to a model directory
that has none (or replace it) without converting or verifying the model again.

Exit codes: 0 attached; 1 unreadable input, or a tokenizer whose ids the model does not have.
"""

from __future__ import annotations

import argparse
import logging

from tnn.convert.tokenizer import attach_tokenizer

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory (written by tnn convert or training)")
    parser.add_argument("tokenizer", metavar="TOKENIZER_DIR", help="a Hugging Face tokenizer directory")
    parser.add_argument(
        "--fairseq-dict",
        default=None,
        metavar="FILE",
        help="the dict.txt the (fairseq) model was trained with; TOKENIZER_DIR is then its GPT-2 BPE",
    )


def run(args: argparse.Namespace) -> int:
    try:
        record = attach_tokenizer(args.model_dir, args.tokenizer, fairseq_dict=args.fairseq_dict)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        logger.error("tnn attach-tokenizer: %s", exc)
        return 1
    remapped = f", ids remapped to {record['fairseq_dict']}" if record["fairseq_dict"] else ""
    logger.info("attached the tokenizer of %s to %s%s", record["tokenizer"], args.model_dir, remapped)
    return 0
