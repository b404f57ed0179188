"""`tnn chat`: an interactive chat with a running server, keeping the conversation history.

Each line read from stdin is a user turn; the answer streams to stdout. Ctrl-C stops the current answer (the part
already received stays in the history) without quitting; Ctrl-D (end of input) quits. With a MESSAGE argument (or
`-`, read from stdin) it answers that one message and exits. A failed turn is reported on stderr and dropped from
the history; the exit status is then 1 (0 when every turn succeeded, 2 for usage errors).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import openai

from tnn.clients.cli_common import (
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

Message = dict[str, str]  # {"role": ..., "content": ...}

PROMPT = "> "


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "message", nargs="?", default=None, help="answer this one message and exit ('-' reads it from stdin)"
    )
    add_connection_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--system", default=None, help="system message that starts the conversation")


def run(args: argparse.Namespace) -> int:
    history: list[Message] = [{"role": "system", "content": args.system}] if args.system else []
    with make_client(args) as client:
        try:
            params = {"model": model_name(client, args), **sampling_params(args)}
        except openai.OpenAIError as exc:
            report_error("chat", describe_error(exc))
            return EXIT_SERVER_ERROR
        if args.message is not None:
            try:
                message = resolve_prompt(args.message)
            except UsageError as exc:
                report_error("chat", exc)
                return EXIT_USAGE
            return EXIT_OK if answer(client, history, message, params) else EXIT_SERVER_ERROR
        return loop(client, history, params)


def loop(client: Client, history: list[Message], params: dict[str, Any]) -> int:
    """Read user turns until end of input; return the exit status."""
    interactive = sys.stdin.isatty()
    failed = False
    while True:
        try:
            line = input(PROMPT if interactive else "")
        except EOFError:
            if interactive:
                sys.stdout.write("\n")
            return EXIT_SERVER_ERROR if failed else EXIT_OK
        except KeyboardInterrupt:  # at the prompt: a fresh prompt, like the Python REPL
            sys.stdout.write("\n")
            continue
        if line.strip():
            failed |= not answer(client, history, line, params)


def answer(client: Client, history: list[Message], message: str, params: dict[str, Any]) -> bool:
    """Stream the answer to `message` to stdout and extend `history` with both turns; False if the server failed."""
    history.append({"role": "user", "content": message})
    parts: list[str] = []
    interrupted = False
    try:
        stream = client.chat.completions.create(messages=history, stream=True, **params)
        with stream:  # leaving early closes the connection, and the server stops generating
            finish_reason = None
            for chunk in stream:
                for choice in chunk.choices[:1]:
                    finish_reason = choice.finish_reason or finish_reason
                    if choice.delta.content:
                        parts.append(choice.delta.content)
                        sys.stdout.write(choice.delta.content)
                        sys.stdout.flush()
            if finish_reason is None:
                raise IncompleteStreamError("the server closed the stream before the answer finished")
    except KeyboardInterrupt:
        interrupted = True
    except openai.OpenAIError as exc:
        sys.stdout.write("\n" if parts else "")
        report_error("chat", describe_error(exc))
        history.pop()
        return False
    sys.stdout.write("\n")
    sys.stdout.flush()
    if interrupted:
        sys.stderr.write("[interrupted]\n")
    history.append({"role": "assistant", "content": "".join(parts)})
    return True
