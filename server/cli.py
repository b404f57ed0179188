"""`tnn serve [MODEL_DIR]`: flags override TNN_* environment variables; runs uvicorn with a bounded drain."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError

import tnn.model
from tnn.server.app import MAX_HEADER_BYTES, create_app
from tnn.server.settings import Settings
from tnn.server.state import AppState

logger = logging.getLogger(__name__)


# flag -> (Settings field, type, help)
FLAGS: dict[str, tuple[str, type, str]] = {
    "--host": ("host", str, "bind address (default 127.0.0.1; 0.0.0.0 in containers)"),
    "--port": ("port", int, "port (default 8000)"),
    "--device": ("device", str, "auto (cuda if available), cpu, cuda, cuda:N"),
    "--dtype": ("dtype", str, "weights dtype: float32 (default), bfloat16, float16, float64"),
    "--threads": ("threads", int, "torch CPU threads (default: torch's; 1 is best on a shared, busy CPU)"),
    "--served-model-name": ("served_model_name", str, "model id clients send (default: directory name)"),
    "--max-num-seqs": ("max_num_seqs", int, "state slots = concurrent sequences (default 32)"),
    "--max-waiting-requests": ("max_waiting_requests", int, "queued sequences beyond the slots before 429 (128)"),
    "--max-prefill-tokens": ("max_prefill_tokens", int, "prompt tokens prefilled per engine iteration (2048)"),
    "--max-prompt-tokens": ("max_prompt_tokens", int, "longest prompt accepted, else 400 (4096)"),
    "--max-tokens": ("max_tokens", int, "ceiling on max_tokens per choice (2048)"),
    "--embedding-pooling": ("embedding_pooling", str, "/v1/embeddings pooling: mean (default) or last token"),
    "--request-timeout": ("request_timeout", float, "seconds from arrival to the last token (600)"),
    "--drain-timeout": ("drain_timeout", float, "seconds SIGTERM waits for running requests (30)"),
    "--api-key": ("api_key", str, "require 'Authorization: Bearer KEY' (prefer TNN_API_KEY: flags show in ps)"),
    "--cors-origins": ("cors_origins", str, "comma-separated allowed CORS origins"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", nargs="?", type=Path, metavar="MODEL_DIR",
                        help="model directory (default: TNN_MODEL_DIR, else the shipped model)")  # fmt: skip
    for flag, (_, kind, help_text) in FLAGS.items():
        parser.add_argument(flag, type=kind, default=None, help=help_text)
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None, help="warm up before ready")


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
    overrides = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in FLAGS.items()}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.model_dir is not None:
        overrides["model_dir"] = args.model_dir
    if args.warmup is not None:
        overrides["warmup"] = args.warmup
    return Settings(**overrides)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, plus: the first SIGTERM/SIGINT marks the app draining (/ready 503, new requests 503)."""

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.app_state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            logger.info(
                "signal %d: draining running requests (at most %gs)", sig, self.app_state.settings.drain_timeout
            )
        self.app_state.begin_drain()
        super().handle_exit(sig, frame)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        logger.error("invalid settings: %s", exc)
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
    settings = settings.model_copy(update={"model_dir": model_dir})
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="h11",
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=round(settings.drain_timeout),
        log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
        access_log=False,
        server_header=False,
    )
    state: AppState = app.state.tnn
    server = DrainingServer(config, state)
    state.request_shutdown = lambda: setattr(server, "should_exit", True)
    server.run()  # after a signal, uvicorn re-raises it on exit: SIGTERM ends the process with status 143
    return 1 if state.phase == "failed" else 0
