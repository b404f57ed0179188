"""`tnn serve [MODEL_DIR]`: flags (generated from Settings) override TNN_* variables; uvicorn with a bounded drain."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError
from pydantic_settings import CliSettingsSource

import tnn.model
from tnn.server.app import MAX_HEADER_BYTES, create_app
from tnn.server.connections import guarded_protocol
from tnn.server.settings import Settings
from tnn.server.state import AppState

logger = logging.getLogger(__name__)

DRAIN_POLL_SECONDS = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every Settings field becomes a flag (`max_num_seqs` -> `--max-num-seqs`); its description is the help."""
    CliSettingsSource(Settings, root_parser=parser)
    for action in parser._actions:  # argparse has no public way to rename a positional's metavar
        if action.dest == "model_dir":
            action.metavar = "MODEL_DIR"


def default_model_dir() -> Path | None:
    """The shipped model's directory; None when this version of tnn.model ships none or it is not installed."""
    finder = getattr(tnn.model, "default_model_dir", None)
    if finder is None:
        return None
    try:
        return Path(finder())
    except FileNotFoundError as exc:
        logger.error("%s", exc)
        return None


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from flags (those given), then TNN_* variables, then defaults."""
    # `tnn --log-level` belongs to the dispatcher (it always has a value); TNN_LOG_LEVEL, when set, overrides it below
    flags = {name: value for name, value in vars(args).items() if name != "log_level"}
    return Settings(_cli_settings_source=CliSettingsSource(Settings)(parsed_args=flags))


DRAIN_GRACE = 5.0  # seconds uvicorn waits past the drain timeout before cancelling what is left (a backstop)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, plus a drain before uvicorn's shutdown: the first SIGTERM/SIGINT marks the app draining
    while the port stays open (/ready 503, new requests 503, running ones finish); once none is left, or after
    --drain-timeout, uvicorn shuts down. Requests still running at the drain timeout end with a `shutting_down`
    error (an SSE error event then [DONE] for streams, a 503 otherwise) rather than being cancelled mid-chunk. A
    second signal, or one before the model is ready, goes straight to uvicorn's shutdown."""

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.app_state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = self.app_state
        if state.phase != "ready" or self.should_exit:
            state.begin_drain()
            super().handle_exit(sig, frame)
            return
        logger.info("signal %d: draining running requests (at most %gs); /ready answers 503",
                    sig, state.settings.drain_timeout)  # fmt: skip
        state.begin_drain()
        threading.Thread(target=self._exit_when_drained, args=(sig, frame), name="tnn-drain", daemon=True).start()

    def _exit_when_drained(self, sig: int, frame: FrameType | None) -> None:
        deadline = time.monotonic() + self.app_state.settings.drain_timeout
        engine = self.app_state.engine
        while engine is not None and engine.outstanding > 0 and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL_SECONDS)
        if engine is not None and engine.outstanding > 0:
            logger.warning("ending %d running sequence(s): the drain timeout (%gs) is over", engine.outstanding,
                           self.app_state.settings.drain_timeout)  # fmt: skip
            engine.stop()  # what still runs gets a shutting_down error event (503), then [DONE]
        self.config.timeout_graceful_shutdown = DRAIN_GRACE  # time to write those last events
        super().handle_exit(sig, frame)


def describe_invalid_settings(exc: ValidationError) -> str:
    """Each problem with the setting it concerns, never the values given (pydantic's own text repeats the input,
    API and admin keys included)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False)
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        logger.error("invalid settings: %s", describe_invalid_settings(exc))
        return 2
    if "TNN_LOG_LEVEL" in os.environ:
        logging.getLogger().setLevel(settings.log_level)
    model_dir = settings.model_dir or default_model_dir()
    if model_dir is None:
        logger.error("no MODEL_DIR given and no default model installed; run `tnn serve MODEL_DIR` "
                     "(a directory written by `tnn convert` or training) or set TNN_MODEL_DIR")  # fmt: skip
        return 2
    if not (model_dir / "config.json").is_file():
        logger.error("%s is not a model directory (no config.json)%s", model_dir,
                     "" if settings.model_dir else ": the default model is not installed yet")  # fmt: skip
        return 2
    if not settings.skip_tokenizer and not (model_dir / "tokenizer.json").is_file():
        logger.error("%s has no tokenizer (no tokenizer.json): attach one with `tnn attach-tokenizer %s TOKENIZER_DIR`, "
                     "or serve token ids with --skip-tokenizer", model_dir, model_dir)  # fmt: skip
        return 2
    settings = settings.model_copy(update={"model_dir": model_dir})
    # the engine thread takes the interpreter lock back after each native call (decode kernel, sampler); under
    # streaming load the HTTP thread holds it up to this long first (benchmarks/vs_llamacpp.py at 16 clients:
    # 7-15% more tokens/s at 1 ms than at Python's 5 ms; level at 64; docs/decode-speed.md)
    sys.setswitchinterval(settings.switch_interval)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(
            header_timeout=settings.header_timeout,
            max_connections=settings.max_connections,
            metrics=app.state.tnn.metrics,
        ),  # fmt: skip
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]  (a float works)
        timeout_graceful_shutdown=settings.drain_timeout + DRAIN_GRACE,  # type: ignore[arg-type]  (a float works)
        log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
        access_log=False,
        server_header=False,
    )
    state: AppState = app.state.tnn
    server = DrainingServer(config, state)
    state.request_shutdown = lambda: setattr(server, "should_exit", True)
    server.run()  # after a signal, uvicorn re-raises it on exit: SIGTERM ends the process with status 143
    return 1 if state.phase == "failed" else 0
