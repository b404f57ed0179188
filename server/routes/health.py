"""Liveness, readiness and Prometheus scraping: open without an API key."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tnn.server.deps import StateDep
from tnn.server.openapi import EVERY_ROUTE, error_responses
from tnn.server.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/health", responses={**error_responses(*EVERY_ROUTE), 200: {"model": HealthResponse},
                                   503: {"model": HealthResponse, "description": "the engine died"}})  # fmt: skip
def health(state: StateDep) -> JSONResponse:
    """200 while the process is up and the engine has not died (also while loading); 503 otherwise."""
    dead = state.phase == "failed" or (state.phase == "ready" and state.engine is not None and not state.engine.alive)
    return JSONResponse({"status": "unhealthy" if dead else "ok"}, status_code=503 if dead else 200)


@router.get("/ready", responses={**error_responses(*EVERY_ROUTE), 200: {"model": ReadyResponse},
                                  503: {"model": ReadyResponse, "description": "loading, draining or failed"}})  # fmt: skip
def ready(state: StateDep) -> JSONResponse:
    """200 once the model is loaded and warmed up; 503 while loading, draining or failed."""
    body = ReadyResponse(ready=state.ready, status=state.phase)
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, responses=error_responses(*EVERY_ROUTE))
def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
