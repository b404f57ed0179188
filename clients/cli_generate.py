"""`tnn generate PROMPT`: one completion from a running server.

The text streams to stdout as it arrives (or arrives whole with --no-stream), followed by a newline; usage and
timing (time to first token, tokens/s) go to stderr. --json prints one JSON object instead of the text.
Exit status: 0 ok, 1 server error (message on stderr), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

from tnn.clients.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SERVER_ERROR,
    EXIT_USAGE,
    UsageError,
    add_connection_arguments,
    add_sampling_arguments,
    make_client,
    report_error,
    resolve_prompt,
    sampling_params,
)
from tnn.clients.errors import TnnError
from tnn.clients.protocol import GenerationParams
from tnn.clients.sync_client import Client
from tnn.clients.types import Completion


@dataclass(frozen=True)
class Timing:
    """Wall-clock measurements of one request, seen from the client. `ttft_s` is None without streaming."""

    total_s: float
    ttft_s: float | None
    tokens_per_s: float | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt; '-' reads it from stdin")
    add_connection_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--no-stream", action="store_true", help="wait for the whole answer instead of streaming")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object instead of the text")


def run(args: argparse.Namespace) -> int:
    try:
        prompt = resolve_prompt(args.prompt)
    except UsageError as exc:
        report_error("generate", exc)
        return EXIT_USAGE
    try:
        with make_client(args) as client:
            if args.no_stream:
                result, timing = generate_whole(client, prompt, sampling_params(args))
            else:
                result, timing = generate_streaming(client, prompt, sampling_params(args), echo=not args.json)
    except TnnError as exc:
        report_error("generate", exc)
        return EXIT_SERVER_ERROR
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return EXIT_INTERRUPTED
    if args.json:
        summary = {
            "text": result.text,
            "finish_reason": result.finish_reason,
            "usage": asdict(result.usage) if result.usage else None,
            "model": result.model,
            "id": result.id,
            "timing": asdict(timing),
        }
        sys.stdout.write(json.dumps(summary, ensure_ascii=False) + "\n")
    elif args.no_stream:
        sys.stdout.write(result.text + "\n")
    else:
        sys.stdout.write("\n")
    sys.stdout.flush()
    sys.stderr.write(format_stats(result, timing) + "\n")
    return EXIT_OK


def generate_whole(client: Client, prompt: str, params: GenerationParams) -> tuple[Completion, Timing]:
    """One non-streaming completion, timed."""
    start = time.perf_counter()
    result = client.complete(prompt, **params)
    total = time.perf_counter() - start
    tokens = result.usage.completion_tokens if result.usage else None
    return result, Timing(total_s=total, ttft_s=None, tokens_per_s=tokens / total if tokens and total > 0 else None)


def generate_streaming(
    client: Client, prompt: str, params: GenerationParams, *, echo: bool
) -> tuple[Completion, Timing]:
    """One streamed completion, written to stdout as it arrives when `echo`; tokens/s counts decode only."""
    start = time.perf_counter()
    first: float | None = None
    with client.stream_complete(prompt, **params) as stream:
        for delta in stream:
            if first is None:
                first = time.perf_counter()
            if echo:
                sys.stdout.write(delta)
                sys.stdout.flush()
        result = stream.completion
    end = time.perf_counter()
    tokens = result.usage.completion_tokens if result.usage else None
    rate = None
    if first is not None and tokens is not None and tokens > 1 and end > first:
        rate = (tokens - 1) / (end - first)  # the first token's time is TTFT
    return result, Timing(total_s=end - start, ttft_s=None if first is None else first - start, tokens_per_s=rate)


def format_stats(result: Completion, timing: Timing) -> str:
    """The stderr summary line: usage, finish reason, TTFT, tokens/s, total time."""
    parts = []
    if result.usage:
        u = result.usage
        parts.append(f"prompt_tokens={u.prompt_tokens} completion_tokens={u.completion_tokens}")
    parts.append(f"finish_reason={result.finish_reason}")
    if timing.ttft_s is not None:
        parts.append(f"ttft={timing.ttft_s * 1000:.1f}ms")
    if timing.tokens_per_s is not None:
        kind = "decode " if timing.ttft_s is not None else ""
        parts.append(f"{kind}{timing.tokens_per_s:.1f} tokens/s")
    parts.append(f"total={timing.total_s:.3f}s")
    return " | ".join(parts)
