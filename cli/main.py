"""The `tnn` command: one entry point, subcommands owned by the packages that implement them.

Only the chosen subcommand's module is imported, so `tnn generate` (a pure HTTP client) never imports torch.
Each subcommand module provides `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("tnn.convert.cli", "convert a TNN checkpoint (model directory or fairseq .pt) for serving"),
    "attach-tokenizer": (
        "tnn.convert.attach_cli",
        "add a tokenizer (optionally a fairseq dict.txt) to a model directory",
    ),
    "compile-step": (
        "tnn.model.native_step_cli",
        "build a converted model's native decode step (native kernel or AOTInductor) for tnn serve",
    ),
    "serve": ("tnn.server.cli", "serve a model directory over an OpenAI-compatible HTTP API"),
    "generate": ("tnn.clients.cli_generate", "complete a prompt on a running server, streaming the text"),
    "chat": ("tnn.clients.cli_chat", "chat interactively with a running server"),
    "embed": ("tnn.clients.cli_embed", "embeddings of texts from a running server (/v1/embeddings)"),
    "train": ("tnn.training.train_cli", "train a TNN (or the GPT-2 baseline) on Shakespeare into a model directory"),
    "eval": ("tnn.training.eval_cli", "bits per byte of a model directory on a text, parallel and recurrent"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tnn", description="Toeplitz Neural Network serving toolkit.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in SUBCOMMANDS), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return int(module.run(args))


if __name__ == "__main__":
    sys.exit(main())
