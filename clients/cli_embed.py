"""`tnn embed TEXT...`: embeddings of one or more texts from a running server (/v1/embeddings, via the SDK's
`Client.embeddings.create`).

Prints one line per text: its index, dimension, L2 norm and first values; --json prints the OpenAI response
(vectors included) instead. Exit status: 0 ok, 1 server error (message on stderr), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import openai

from tnn.clients.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SERVER_ERROR,
    EXIT_USAGE,
    UsageError,
    add_connection_arguments,
    describe_error,
    make_client,
    model_name,
    report_error,
    resolve_prompt,
)

PREVIEW = 4  # values shown per vector without --json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="text(s) to embed; '-' reads one from stdin")
    add_connection_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the OpenAI response as JSON (vectors included)")


def run(args: argparse.Namespace) -> int:
    try:
        texts = [resolve_prompt(text) for text in args.texts]
        client = make_client(args)
        result = client.embeddings.create(model=model_name(client, args), input=texts, encoding_format="float")
    except UsageError as exc:
        report_error("embed", exc)
        return EXIT_USAGE
    except openai.OpenAIError as exc:
        report_error("embed", describe_error(exc))
        return EXIT_SERVER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if args.json:
        sys.stdout.write(json.dumps(result.model_dump(), indent=2) + "\n")
        return EXIT_OK
    for item in result.data:
        vector = item.embedding
        norm = math.sqrt(sum(v * v for v in vector))
        head = ", ".join(f"{v:.4f}" for v in vector[:PREVIEW])
        sys.stdout.write(f"{item.index}\tdim={len(vector)}\tnorm={norm:.4f}\t[{head}, ...]\n")
    sys.stderr.write(f"model={result.model} prompt_tokens={result.usage.prompt_tokens}\n")
    return EXIT_OK
