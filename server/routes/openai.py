"""OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from tnn.server.deps import ServingDep, StateDep
from tnn.server.errors import ApiError
from tnn.server.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, serving: ServingDep) -> Response:
    return await serving.completions(body, request)


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, serving: ServingDep) -> Response:
    return await serving.chat(body, request)


def _card(state: StateDep) -> ModelCard:
    return ModelCard(
        id=state.model_name,
        created=state.created,
        root=str(state.settings.model_dir),
        max_model_len=state.settings.max_prompt_tokens,
        state_bytes_per_sequence=state.engine.state_bytes_per_sequence if state.engine is not None else None,
    )


@router.get("/models")
def list_models(state: StateDep) -> ModelList:
    return ModelList(data=[_card(state)])


@router.get("/models/{model:path}")
def get_model(model: str, state: StateDep) -> ModelCard:
    if model != state.model_name:
        raise ApiError(404, f"model {model!r} does not exist", param="model", code="model_not_found")
    return _card(state)
