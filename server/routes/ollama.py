"""Ollama-compatible routes (/api/...): chat, generate, embed, tags, show, version. Errors come as Ollama's
`{"error": "message"}` with the same status codes as the OpenAI routes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

from tnn.server.deps import EmbeddingsDep, ServingDep, StateDep, reject_invalid_text
from tnn.server.embeddings import ClientGone
from tnn.server.errors import ApiError, validation_error
from tnn.server.ollama import (
    API_VERSION,
    Ollama,
    OllamaChatRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    served_name,
)
from tnn.server.openapi import BEHIND_THE_KEY, GENERATION, WITH_A_BODY, error_responses
from tnn.server.schemas import EmbeddingRequest, ErrorResponse
from tnn.server.state import AppState


class OllamaError(BaseModel):
    error: str


def ollama_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The routes' own errors are Ollama's `{"error": ...}`; those the middleware answers (401, 413, 431, ...)
    keep the server's envelope."""
    return {code: {**spec, "model": OllamaError | ErrorResponse} for code, spec in error_responses(*codes).items()}


NDJSON_LINES = {"application/x-ndjson": {"schema": {"type": "string", "description": "JSON objects, one a line"}}}


class OllamaErrors(APIRoute):
    """Reads bodies and answers errors as Ollama does: JSON whatever the Content-Type, errors as
    `{"error": "message"}` (counted like every error answer)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            if request.method == "POST":  # the body is JSON whatever its type says, as in Ollama (`curl -d`)
                headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
                request.scope["headers"] = [*headers, (b"content-type", b"application/json")]
                if hasattr(request, "_headers"):
                    del request._headers  # Starlette's cached view of the scope's headers
            try:
                return await handler(request)
            except (ApiError, RequestValidationError) as exc:
                error = exc if isinstance(exc, ApiError) else validation_error(exc.errors())
                request.app.state.tnn.metrics.errors.labels(code=str(error.status)).inc()
                return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)

        return handle


router = APIRouter(prefix="/api", tags=["ollama"], route_class=OllamaErrors,
                   dependencies=[Depends(reject_invalid_text)])  # fmt: skip


@router.post("/chat", responses={**ollama_errors(*GENERATION), 200: {"content": NDJSON_LINES}})
async def chat(body: OllamaChatRequest, request: Request, serving: ServingDep) -> Response:
    return await Ollama(serving).chat(body, request)


@router.post("/generate", responses={**ollama_errors(*GENERATION), 200: {"content": NDJSON_LINES}})
async def generate(body: OllamaGenerateRequest, request: Request, serving: ServingDep) -> Response:
    return await Ollama(serving).generate(body, request)


@router.post("/embed", response_model=None, responses=ollama_errors(*GENERATION))
async def embed(body: OllamaEmbedRequest, request: Request, service: EmbeddingsDep) -> dict[str, Any] | Response:
    served_name(body.model, service.serving)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    try:
        answer = await service.create(
            EmbeddingRequest(input=inputs, dimensions=body.dimensions), request.is_disconnected
        )
    except ClientGone:
        return Response(status_code=499)  # nobody reads it
    return {"model": body.model, "embeddings": [item.embedding for item in answer.data],
            "prompt_eval_count": answer.usage.prompt_tokens}  # fmt: skip


@router.get("/version", responses=ollama_errors(*BEHIND_THE_KEY))
def version() -> dict[str, str]:
    return {"version": API_VERSION}


def _details(state: AppState) -> dict[str, Any]:
    model = state.engine.model if state.engine is not None else None
    count = sum(p.numel() for p in model.parameters()) if model is not None else 0
    return {
        "parent_model": "",
        "format": "safetensors",
        "family": "tnn",
        "families": ["tnn"],
        "parameter_size": f"{count / 1e6:.1f}M",
        "quantization_level": state.settings.dtype.upper(),
    }


def _entry(state: AppState) -> dict[str, Any]:
    directory = state.settings.model_dir
    files = [p for p in directory.rglob("*") if p.is_file()] if directory is not None else []
    digest = hashlib.sha256(f"{state.model_name}:{directory}:{state.created}".encode()).hexdigest()
    name = state.model_name if ":" in state.model_name else f"{state.model_name}:latest"
    return {"name": name, "model": name, "modified_at": _created(state), "size": sum(p.stat().st_size for p in files),
            "digest": digest, "details": _details(state)}  # fmt: skip


def _created(state: AppState) -> str:
    return datetime.fromtimestamp(state.created, UTC).isoformat().replace("+00:00", "Z")


@router.get("/tags", responses=ollama_errors(*BEHIND_THE_KEY))
def tags(state: StateDep) -> dict[str, Any]:
    return {"models": [_entry(state)]}


class OllamaShowRequest(BaseModel):
    model: str | None = None
    name: str | None = None  # the field's older name


@router.post("/show", responses=ollama_errors(*WITH_A_BODY))
async def show(body: OllamaShowRequest, state: StateDep, serving: ServingDep) -> dict[str, Any]:
    name = body.model or body.name
    if name is None:
        raise ApiError(400, "model is required", param="model", code="invalid_value")
    served_name(name, serving)
    model = serving.engine.model
    config = model.config
    info = {
        "general.architecture": "tnn",
        "general.parameter_count": sum(p.numel() for p in model.parameters()),
        "tnn.context_length": state.settings.max_prompt_tokens,
        "tnn.embedding_length": config.d_model,
        "tnn.block_count": config.n_layers,
        "tnn.vocab_size": config.vocab_size,
    }
    template = getattr(serving.tokenizer, "chat_template", "")
    return {"modelfile": "", "parameters": "", "template": template, "details": _details(state), "model_info": info,
            "capabilities": ["completion"] if serving.engine.generative else ["embedding"],
            "modified_at": _created(state)}  # fmt: skip
