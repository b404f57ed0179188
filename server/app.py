"""The FastAPI application: `create_app(settings, engine=None)`.

The lifespan starts loading in the background, so the port answers /health (200) and /ready (503) at once;
loading (and ETSC conversion of an unconverted directory), warm-up and the engine thread follow, then /ready
turns 200. On shutdown the engine stops; uvicorn has already drained running requests (bounded).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

import tnn.model
from tnn.model.native_kernel import usable_cpus
from tnn.server.embeddings import Embeddings
from tnn.server.engine import Engine
from tnn.server.errors import install_error_handlers
from tnn.server.generation_config import GenerationDefaults, load_generation_defaults
from tnn.server.metrics import Metrics
from tnn.server.middleware import OPEN_PATHS, ApiKeyMiddleware, RequestLimitMiddleware, UnexpectedErrorMiddleware
from tnn.server.model_check import check_servable
from tnn.server.openapi import install_openapi
from tnn.server.routes import admin, docs, embeddings, health, ollama, openai, playground, responses, tokenize
from tnn.server.serving import Serving
from tnn.server.settings import Settings
from tnn.server.state import AppState
from tnn.server.tokenizer import ServerTokenizer, TokenIdTokenizer

logger = logging.getLogger(__name__)

MAX_HEADERS = 100  # count and total size of request headers (vLLM GHSA-rxc4-3w6r-4v47: one huge-header GET)
MAX_HEADER_BYTES = 16 * 1024


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_threads() -> int:
    """torch threads for `--threads 0`: one fewer than the CPUs this process may run on, at least 1."""
    return max(1, usable_cpus() - 1)


def build_engine(settings: Settings, metrics: Metrics) -> Engine:
    """Load the model directory (converting it if needed) and its tokenizer onto the configured device."""
    assert settings.model_dir is not None
    device = resolve_device(settings.device)
    # the engine thread's torch ops and the HTTP thread share the CPUs: with every core in torch's thread pool, its
    # spinning workers take the core the HTTP thread needs (benchmarks/vs_llamacpp.py, docs/decode-speed.md)
    torch.set_num_threads(settings.threads or default_threads())
    model = tnn.model.load(settings.model_dir, device=device, dtype=getattr(torch, settings.dtype))
    if not model.config.causal:
        logger.info("%s is bidirectional (an encoder): serving /v1/embeddings only, no conversion", settings.model_dir)
    elif not model.is_converted:
        logger.info("%s is not converted: converting on load with the default method %r (tnn convert does it "
                    "once, offline)", settings.model_dir, tnn.model.conversion.DEFAULT_METHOD)  # fmt: skip
        tnn.model.attach_ssm(model)
    tokenizer = (
        TokenIdTokenizer() if settings.skip_tokenizer else ServerTokenizer(settings.model_dir, add_bos=settings.add_bos)
    )
    check_servable(model, tokenizer if isinstance(tokenizer, ServerTokenizer) else None, settings.model_dir)
    return Engine(model, tokenizer, settings=settings, metrics=metrics)


async def _start(app: FastAPI, state: AppState, engine: Engine | None) -> None:
    settings = state.settings
    try:
        if engine is None:
            engine = await asyncio.to_thread(build_engine, settings, state.metrics)
        model = engine.model
        if engine.decode_step is not None and engine.slot_plan is not None:
            logger.info(
                "model %s (%s) on %s (%d cpu threads), %s, %s SSM update, %s; %s",
                state.model_name, settings.model_dir, model.device, torch.get_num_threads(), model.dtype,
                "fused" if engine.fused_step else "eager", engine.decode_step.describe(), engine.slot_plan.describe(),
            )  # fmt: skip
        else:
            logger.info("model %s (%s) on %s (%d cpu threads), %s: an encoder, embeddings only",
                        state.model_name, settings.model_dir, model.device, torch.get_num_threads(), model.dtype)  # fmt: skip
        defaults = GenerationDefaults()
        if settings.model_dir is not None:
            defaults = load_generation_defaults(settings.model_dir, settings.generation_config)
        if any(token >= engine.vocab_size for token in defaults.eos_token_ids):
            raise ValueError(f"{defaults.source}: eos_token_id {list(defaults.eos_token_ids)} outside the vocabulary "
                             f"(ids 0..{engine.vocab_size - 1})")  # fmt: skip
        if settings.warmup:
            seconds = await asyncio.to_thread(engine.warmup)
            logger.info("warm-up done in %.2fs", seconds)
        engine.start(asyncio.get_running_loop())
        state.engine = engine
        state.serving = Serving(engine, engine.tokenizer, settings, state.metrics, state.model_name, defaults)
        state.embeddings = Embeddings(engine, state.serving, settings)
        if state.phase == "loading":
            state.phase = "ready"
            logger.info("ready: serving %r on the OpenAI API", state.model_name)
    except (ValueError, FileNotFoundError) as exc:  # a broken model: the message names the file, field or layer
        logger.error("cannot serve %s: %s; shutting down", settings.model_dir, exc)
        _fail(state)
    except Exception:
        logger.exception("failed to load %s; shutting down", settings.model_dir)
        _fail(state)


def _fail(state: AppState) -> None:
    state.phase = "failed"  # /health answers 503
    if state.request_shutdown is not None:
        state.request_shutdown()  # `tnn serve` exits with status 1


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """The app; with `engine` given (tests), its model, tokenizer and metrics are used instead of loading."""
    name = settings.served_model_name or (settings.model_dir.name if settings.model_dir else "tnn")
    metrics = engine.metrics if engine is not None else Metrics(name)
    state = AppState(settings=settings, metrics=metrics, model_name=name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_start(app, state, engine))
        yield
        state.begin_drain()
        if not loading.done():
            loading.cancel()
        if state.engine is not None:
            await asyncio.to_thread(state.engine.stop)
            state.engine.close_outbox()
        if state.phase != "failed":
            state.phase = "stopped"

    app = FastAPI(title="tnn-serve", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.tnn = state
    install_error_handlers(app, metrics)
    install_openapi(app)
    docs.install(app)  # /docs and /redoc from local assets
    app.include_router(health.router)
    app.include_router(openai.router)
    app.include_router(responses.router)
    app.include_router(embeddings.router)
    app.include_router(tokenize.router)
    app.include_router(admin.router)
    app.include_router(ollama.router)
    if settings.playground:
        playground.mount(app)
    app.add_middleware(
        RequestLimitMiddleware,
        limit=settings.max_body_bytes,
        max_headers=MAX_HEADERS,
        max_header_bytes=MAX_HEADER_BYTES,
        body_timeout=settings.body_timeout,
        metrics=metrics,
    )
    if settings.api_key is not None:
        logger.info("authentication is on: every route but %s needs 'Authorization: Bearer <key>'",
                    ", ".join(sorted(OPEN_PATHS)))  # fmt: skip
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key.get_secret_value(), metrics=metrics,
                           is_public=playground.is_public if settings.playground else lambda path: False)  # fmt: skip
    else:
        logger.warning("authentication is off (%s): anyone who reaches the port can use the model",
                       "--no-auth" if settings.auth is False else "no api_key / TNN_API_KEY set")  # fmt: skip
    app.add_middleware(UnexpectedErrorMiddleware, metrics=metrics)  # outside the others: their faults too
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=settings.cors_allow_headers)  # fmt: skip
    return app
