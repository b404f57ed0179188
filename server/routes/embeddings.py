"""OpenAI-compatible /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from tnn.server.deps import EmbeddingsDep, reject_invalid_text
from tnn.server.openapi import GENERATION, error_responses
from tnn.server.schemas import EmbeddingRequest, EmbeddingResponse

router = APIRouter(
    prefix="/v1", tags=["openai"], dependencies=[Depends(reject_invalid_text)], responses=error_responses(*GENERATION)
)


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, service: EmbeddingsDep) -> EmbeddingResponse:
    return await service.create(body)
