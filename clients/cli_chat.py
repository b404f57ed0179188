"""`tnn chat`: an interactive chat with a running server, keeping the conversation history.

Each line read from stdin is a user turn; the answer streams to stdout. Ctrl-C stops the current answer (the part
already received stays in the history) without quitting; Ctrl-D (end of input) quits. With a MESSAGE argument (or
`-`, read from stdin) it answers that one message and exits. A failed turn is reported on stderr and dropped from
the history; the exit status is then 1 (0 when every turn succeeded, 2 for usage errors).
"""

from __future__ import annotations

import argparse
import sys

from tnn.clients.cli_common import (
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
from tnn.clients.types import ChatMessage

PROMPT = "> "


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "message", nargs="?", default=None, help="answer this one message and exit ('-' reads it from stdin)"
    )
    add_connection_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--system", default=None, help="system message that starts the conversation")


def run(args: argparse.Namespace) -> int:
    history: list[ChatMessage] = [ChatMessage("system", args.system)] if args.system else []
    params = sampling_params(args)
    with make_client(args) as client:
        if args.message is not None:
            try:
                message = resolve_prompt(args.message)
            except UsageError as exc:
                report_error("chat", exc)
                return EXIT_USAGE
            return EXIT_OK if answer(client, history, message, params) else EXIT_SERVER_ERROR
        return loop(client, history, params)


def loop(client: Client, history: list[ChatMessage], params: GenerationParams) -> int:
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


def answer(client: Client, history: list[ChatMessage], message: str, params: GenerationParams) -> bool:
    """Stream the answer to `message` to stdout and extend `history` with both turns; False if the server failed."""
    history.append(ChatMessage("user", message))
    stream = client.stream_chat(history, **params)
    interrupted = False
    try:
        for delta in stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
    except KeyboardInterrupt:
        interrupted = True
    except TnnError as exc:
        sys.stdout.write("\n" if stream.text else "")
        report_error("chat", exc)
        history.pop()
        return False
    finally:
        stream.close()  # closing the connection makes the server stop generating
    sys.stdout.write("\n")
    sys.stdout.flush()
    if interrupted:
        sys.stderr.write("[interrupted]\n")
    history.append(ChatMessage("assistant", stream.text))
    return True
