"""OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from tnn.server.deps import ServingDep, StateDep, reject_invalid_text
from tnn.server.embeddings import embedding_info
from tnn.server.errors import ApiError
from tnn.server.openapi import BEHIND_THE_KEY, GENERATION, error_responses
from tnn.server.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(reject_invalid_text)])
# with "stream": true; each event's data is a JSON chunk, an error envelope, or [DONE]
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"},
             "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}  # fmt: skip
SSE = {"text/event-stream": {"schema": SSE_EVENT}}


@router.post(
    "/completions", responses={**error_responses(*GENERATION), 200: {"model": CompletionResponse, "content": SSE}}
)
async def completions(body: CompletionRequest, request: Request, serving: ServingDep) -> Response:
    return await serving.completions(body, request)


@router.post(
    "/chat/completions",
    responses={**error_responses(*GENERATION), 200: {"model": ChatCompletionResponse, "content": SSE}},
)
async def chat_completions(body: ChatCompletionRequest, request: Request, serving: ServingDep) -> Response:
    return await serving.chat(body, request)


def _card(state: StateDep) -> ModelCard:
    model = state.engine.model if state.engine is not None else None
    return ModelCard(
        id=state.model_name,
        created=state.created,
        root=str(state.settings.model_dir),
        max_model_len=state.settings.max_prompt_tokens,
        generation_defaults=state.serving.defaults.shown() if state.serving is not None else {},
        state_bytes_per_sequence=state.engine.state_bytes_per_sequence if state.engine is not None else None,
        operator=model.config.operator if model is not None else "tnn",
        causal=model.config.causal if model is not None else True,
        embedding=embedding_info(model, state.settings) if model is not None else None,
    )


@router.get("/models", responses=error_responses(*BEHIND_THE_KEY))
def list_models(state: StateDep) -> ModelList:
    return ModelList(data=[_card(state)])


@router.get("/models/{model:path}", responses=error_responses(*BEHIND_THE_KEY, 404))
def get_model(model: str, state: StateDep) -> ModelCard:
    if model != state.model_name:
        raise ApiError(404, f"model {model!r} does not exist", param="model", code="model_not_found")
    return _card(state)
