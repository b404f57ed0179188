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
from typing import Any

import openai
from openai.types import CompletionUsage

from tnn.clients.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SERVER_ERROR,
    EXIT_USAGE,
    IncompleteStreamError,
    UsageError,
    add_connection_arguments,
    add_sampling_arguments,
    describe_error,
    make_client,
    model_name,
    report_error,
    resolve_prompt,
    sampling_params,
)
from tnn.clients.client import Client


@dataclass(frozen=True)
class Result:
    """The first choice of a completion, whole or gathered from a stream."""

    text: str
    finish_reason: str | None
    usage: CompletionUsage | None
    model: str
    id: str


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
            params = {"model": model_name(client, args), "prompt": prompt, **sampling_params(args)}
            if args.no_stream:
                result, timing = generate_whole(client, params)
            else:
                result, timing = generate_streaming(client, params, echo=not args.json)
    except openai.OpenAIError as exc:
        report_error("generate", describe_error(exc))
        return EXIT_SERVER_ERROR
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return EXIT_INTERRUPTED
    if args.json:
        summary = {
            "text": result.text,
            "finish_reason": result.finish_reason,
            "usage": usage_counts(result.usage),
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


def usage_counts(usage: CompletionUsage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {name: getattr(usage, name) for name in ("prompt_tokens", "completion_tokens", "total_tokens")}


def generate_whole(client: Client, params: dict[str, Any]) -> tuple[Result, Timing]:
    """One non-streaming completion, timed."""
    start = time.perf_counter()
    completion = client.completions.create(**params)
    total = time.perf_counter() - start
    choice = completion.choices[0]
    result = Result(choice.text, choice.finish_reason, completion.usage, completion.model, completion.id)
    tokens = result.usage.completion_tokens if result.usage else None
    return result, Timing(total_s=total, ttft_s=None, tokens_per_s=tokens / total if tokens and total > 0 else None)


def generate_streaming(client: Client, params: dict[str, Any], *, echo: bool) -> tuple[Result, Timing]:
    """One streamed completion, written to stdout as it arrives when `echo`; tokens/s counts decode only."""
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    finish_reason: str | None = None
    usage: CompletionUsage | None = None
    model = ident = ""
    stream = client.completions.create(**params, stream=True, stream_options={"include_usage": True})
    with stream:  # leaving early closes the connection, and the server stops generating
        for chunk in stream:
            model, ident, usage = chunk.model or model, chunk.id or ident, chunk.usage or usage
            for choice in chunk.choices[:1]:
                finish_reason = choice.finish_reason or finish_reason
                if not choice.text:
                    continue
                if first is None:
                    first = time.perf_counter()
                parts.append(choice.text)
                if echo:
                    sys.stdout.write(choice.text)
                    sys.stdout.flush()
    if finish_reason is None:
        raise IncompleteStreamError("the server closed the stream before the answer finished")
    end = time.perf_counter()
    result = Result("".join(parts), finish_reason, usage, model, ident)
    tokens = usage.completion_tokens if usage else None
    rate = None
    if first is not None and tokens is not None and tokens > 1 and end > first:
        rate = (tokens - 1) / (end - first)  # the first token's time is TTFT
    return result, Timing(total_s=end - start, ttft_s=None if first is None else first - start, tokens_per_s=rate)


def format_stats(result: Result, timing: Timing) -> str:
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
