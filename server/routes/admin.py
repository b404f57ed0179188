"""Operator routes under /admin, authenticated by the admin key (TNN_ADMIN_KEY, else TNN_API_KEY); with neither
set they are off (403). The API-key middleware lets /admin/* through so that the two keys can differ."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from tnn.server.auth import AuthProblem, check_bearer
from tnn.server.deps import StateDep
from tnn.server.errors import ApiError
from tnn.server.openapi import WITH_A_BODY, error_responses

ADMIN_PREFIX = "/admin"


async def require_admin(state: StateDep, request: Request) -> None:
    key = state.settings.admin_key or state.settings.api_key
    if key is None:
        raise ApiError(403, "admin routes are off: start the server with TNN_ADMIN_KEY (or TNN_API_KEY)",
                       code="admin_disabled")  # fmt: skip
    problem = check_bearer([v for k, v in request.scope["headers"] if k == b"authorization"],
                           key.get_secret_value().encode())  # fmt: skip
    if problem is AuthProblem.DUPLICATE:
        raise ApiError(400, problem.value, code="duplicate_authorization")
    if problem is not None:
        raise ApiError(401, f"{problem.value.replace('API', 'admin')}: send 'Authorization: Bearer <admin key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


router = APIRouter(
    prefix=ADMIN_PREFIX,
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(*WITH_A_BODY, 403),
)


@router.post("/reset_prefix_cache")
async def reset_prefix_cache(state: StateDep) -> JSONResponse:
    """Drop every cached prefix state, in memory and on disk (vLLM's /reset_prefix_cache, authenticated)."""
    engine = state.engine
    if engine is None:
        raise ApiError(503, f"the server is not ready ({state.phase}); retry later", code=f"server_{state.phase}")
    cache = engine.prefix_cache
    cleared = {"memory_entries": 0, "disk_entries": 0} if cache is None else await asyncio.to_thread(cache.clear)
    return JSONResponse({"object": "prefix_cache.reset", "enabled": cache is not None, **cleared})
