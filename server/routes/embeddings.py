"""OpenAI-compatible /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter

from tnn.server.deps import EmbeddingsDep
from tnn.server.schemas import EmbeddingRequest, EmbeddingResponse

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, service: EmbeddingsDep) -> EmbeddingResponse:
    return await service.create(body)
