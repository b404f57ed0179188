"""`tnn train`: train a TNN (or the GPT-2 baseline) on the Shakespeare corpus into a model directory."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import get_args

import torch

from tnn.model.config import Operator
from tnn.training.train import TrainConfig, train

_DEFAULTS = TrainConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output model directory (also holds checkpoint.pt)")
    parser.add_argument("--arch", choices=["tnn", "gpt2"], default=_DEFAULTS.arch, help="tnn, or the gpt2 baseline")
    parser.add_argument("--tokenizer", default=None, help="reuse this directory's tokenizer (default: train one)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    for field in dataclasses.fields(TrainConfig):
        if field.name == "arch":
            continue
        if field.name == "operator":
            parser.add_argument(
                "--operator",
                choices=get_args(Operator),
                default=_DEFAULTS.operator,
                help="the TNN's token mixer: tnn, fd (FD-TNN) or ski (causal SKI-TNN); default: %(default)s",
            )
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = float if field.name == "minutes" else type(getattr(_DEFAULTS, field.name))
        parser.add_argument(flag, type=kind, default=getattr(_DEFAULTS, field.name), help="default: %(default)s")


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    record = train(
        TrainConfig(**values),
        args.out,
        device=device,
        tokenizer_dir=args.tokenizer,
        resume=args.resume,
        progress=not args.no_progress,
    )
    summary = {
        key: record[key]
        for key in ("arch", "operator", "parameters", "steps", "tokens_seen", "wall_time_s", "train_tokens_per_s")
    }
    summary["validation_bits_per_byte"] = record["validation"]["bits_per_byte"]
    summary["test_bits_per_byte"] = record["test"]["bits_per_byte"]
    print(json.dumps(summary, indent=2))  # noqa: T201 (CLI stdout)
    return 0
