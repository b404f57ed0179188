"""Pieces shared by `tnn generate` and `tnn chat`: common flags, the client they build, exit codes, stdin prompts,
and one-line messages for the SDK's errors."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import openai

from tnn.clients.client import DEFAULT_URL, Client

EXIT_OK = 0
EXIT_SERVER_ERROR = 1  # the server answered with an error, or could not be reached
EXIT_USAGE = 2  # bad command line or input (argparse exits with 2 as well)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class UsageError(Exception):
    """The command line or its input cannot be used; reported with exit status 2."""


class IncompleteStreamError(openai.OpenAIError):
    """The stream ended without a finish reason: the connection closed before the answer was complete."""


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


def sampling_params(args: argparse.Namespace) -> dict[str, Any]:
    """The SDK keyword arguments named on the command line (unset flags are left out: the server's defaults)."""
    named = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": args.stop,
    }
    return {name: value for name, value in named.items() if value is not None}


def make_client(args: argparse.Namespace) -> Client:
    """A `Client` for the connection flags (5 s to connect); the HTTP library's per-request INFO lines stay quiet."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("httpx", "httpx2", "openai"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return Client(args.url, api_key=args.api_key, timeout=openai.Timeout(args.timeout, connect=min(5.0, args.timeout)))


def model_name(client: Client, args: argparse.Namespace) -> str:
    """--model, else the first model the server lists."""
    if args.model:
        return str(args.model)
    models = client.models.list().data
    if not models:
        raise openai.OpenAIError(f"{client.base_url}models lists no model; pass --model")
    return models[0].id


def describe_error(exc: openai.OpenAIError) -> str:
    """One line for an SDK error: `401: message` for an HTTP error, `cannot reach URL: ...` for a connection."""
    if isinstance(exc, openai.APIStatusError):
        return f"{exc.status_code}: {error_message(exc)}"
    if isinstance(exc, openai.APITimeoutError):
        return f"request to {exc.request.url} timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return f"cannot reach {exc.request.url}: {cause or exc.message}"
    if isinstance(exc, openai.APIError):  # an error event inside a stream
        return error_message(exc)
    return str(exc)


def error_message(exc: openai.APIError) -> str:
    """The OpenAI error object's message (and code), not the SDK's `Error code: ... - {dict}` text."""
    body = exc.body if isinstance(exc.body, dict) else {}
    message = str(body.get("message") or exc.message)
    return f"{message} ({exc.code})" if exc.code else message


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
