"""OpenAI Responses API routes: POST /v1/responses, GET and DELETE /v1/responses/{id}."""

from __future__ import annotations

import hashlib
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, Request, Response

from tnn.server.capacity import free_memory, parse_memory
from tnn.server.conversations import FILE_NAME, ResponseStore
from tnn.server.deps import ServingDep, reject_invalid_text
from tnn.server.openapi import BEHIND_THE_KEY, GENERATION, error_responses
from tnn.server.response_schemas import ResponseRequest
from tnn.server.responses import Responses
from tnn.server.routes.openai import SSE

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(reject_invalid_text)])


async def get_responses(request: Request, serving: ServingDep) -> Responses:
    """The app's Responses (made on first use, on the event loop: one per app)."""
    responses = getattr(request.app.state, "tnn_responses", None)
    if responses is None or responses.serving is not serving:
        settings = serving.settings
        path = settings.state_cache_dir / FILE_NAME if settings.state_cache_dir is not None else None
        budget = parse_memory(settings.response_store, flag="--response-store").of_free(
            lambda: free_memory(torch.device("cpu"))
        )
        responses = Responses(serving, ResponseStore(path, budget))
        request.app.state.tnn_responses = responses
    assert isinstance(responses, Responses)
    return responses


ResponsesDep = Annotated[Responses, Depends(get_responses)]


def owner(request: Request) -> str:
    """Who a stored response belongs to: a sha256 of the request's bearer key ("" without one)."""
    given = request.headers.get("authorization", "")
    scheme, _, key = given.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return ""
    return hashlib.sha256(key.strip().encode()).hexdigest()


@router.post("/responses", responses={**error_responses(*GENERATION), 200: {"content": SSE}})
async def create_response(body: ResponseRequest, request: Request, responses: ResponsesDep) -> Response:
    return await responses.create(body, request, owner(request))


@router.get("/responses/{response_id}", responses=error_responses(*BEHIND_THE_KEY, 404, 503))
async def get_response(response_id: str, request: Request, responses: ResponsesDep) -> dict:
    return await responses.retrieve(response_id, owner(request))


@router.delete("/responses/{response_id}", responses=error_responses(*BEHIND_THE_KEY, 404, 503))
async def delete_response(response_id: str, request: Request, responses: ResponsesDep) -> dict:
    return await responses.delete(response_id, owner(request))
