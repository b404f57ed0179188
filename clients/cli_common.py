"""Pieces shared by `tnn generate` and `tnn chat`: common flags, the client they build, exit codes, stdin prompts."""

from __future__ import annotations

import argparse
import logging
import sys

from tnn.clients.protocol import DEFAULT_URL, GenerationParams
from tnn.clients.sync_client import Client

EXIT_OK = 0
EXIT_SERVER_ERROR = 1  # the server answered with an error, or could not be reached
EXIT_USAGE = 2  # bad command line or input (argparse exits with 2 as well)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class UsageError(Exception):
    """The command line or its input cannot be used; reported with exit status 2."""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--url, --api-key, --model, --timeout."""
    parser.add_argument(
        "--url", default=None, help=f"server root URL (default: $TNN_URL or {DEFAULT_URL}; a trailing /v1 is accepted)"
    )
    parser.add_argument("--api-key", default=None, help="API key sent as a bearer token (default: $TNN_API_KEY)")
    parser.add_argument("--model", default=None, help="model name (default: the first model the server lists)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the server (default: 600)")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """--max-tokens, --temperature, --top-p, --seed, --stop (repeatable). Unset flags use the server's defaults."""
    parser.add_argument("--max-tokens", type=int, default=None, help="maximum number of tokens to generate")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (0 = greedy)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling probability mass")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed, for reproducible output")
    parser.add_argument(
        "--stop", action="append", default=None, metavar="TEXT", help="stop sequence (repeat the flag for several)"
    )


def sampling_params(args: argparse.Namespace) -> GenerationParams:
    """The `GenerationParams` named on the command line."""
    params = GenerationParams()
    if args.model is not None:
        params["model"] = args.model
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.top_p is not None:
        params["top_p"] = args.top_p
    if args.seed is not None:
        params["seed"] = args.seed
    if args.stop:
        params["stop"] = args.stop
    return params


def make_client(args: argparse.Namespace) -> Client:
    """A `Client` for the connection flags; httpx's per-request INFO lines are kept out of the terminal."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    return Client(args.url, api_key=args.api_key, model=args.model, timeout=args.timeout)


def resolve_prompt(prompt: str) -> str:
    """The prompt argument, or all of stdin when it is `-` (minus one trailing newline, as `echo` adds one).

    An empty prompt from stdin is a usage error.
    """
    if prompt != "-":
        return prompt
    text = sys.stdin.read().removesuffix("\n")
    if not text.strip():
        raise UsageError("'-' given but stdin is empty")
    return text


def report_error(command: str, message: object) -> None:
    """One line on stderr: `tnn COMMAND: error: MESSAGE`."""
    sys.stderr.write(f"tnn {command}: error: {message}\n")
    sys.stderr.flush()
