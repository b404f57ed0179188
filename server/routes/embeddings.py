"""OpenAI-compatible /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from tnn.server.deps import EmbeddingsDep, reject_invalid_text
from tnn.server.embeddings import ClientGone
from tnn.server.openapi import GENERATION, error_responses
from tnn.server.schemas import EmbeddingRequest, EmbeddingResponse

router = APIRouter(
    prefix="/v1", tags=["openai"], dependencies=[Depends(reject_invalid_text)], responses=error_responses(*GENERATION)
)


@router.post("/embeddings", response_model=EmbeddingResponse)
async def embeddings(body: EmbeddingRequest, service: EmbeddingsDep, raw: Request) -> EmbeddingResponse | Response:
    try:
        return await service.create(body, raw.is_disconnected)
    except ClientGone:
        return Response(status_code=499)  # nobody reads it
