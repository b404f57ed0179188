"""Operator routes under /admin, authenticated by the admin key (TNN_ADMIN_KEY, else TNN_API_KEY); with neither
set they are off (403). The API-key middleware lets /admin/* through so that the two keys can differ."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse

from tnn.server.deps import StateDep
from tnn.server.errors import ApiError

ADMIN_PREFIX = "/admin"


def require_admin(state: StateDep, authorization: Annotated[str, Header()] = "") -> None:
    key = state.settings.admin_key or state.settings.api_key
    if key is None:
        raise ApiError(403, "admin routes are off: start the server with TNN_ADMIN_KEY (or TNN_API_KEY)",
                       code="admin_disabled")  # fmt: skip
    if not hmac.compare_digest(authorization.encode(), f"Bearer {key.get_secret_value()}".encode()):
        raise ApiError(401, "invalid admin key: send 'Authorization: Bearer <admin key>'", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


router = APIRouter(prefix=ADMIN_PREFIX, tags=["admin"], dependencies=[Depends(require_admin)])


@router.post("/reset_prefix_cache")
async def reset_prefix_cache(state: StateDep) -> JSONResponse:
    """Drop every cached prefix state, in memory and on disk (vLLM's /reset_prefix_cache, authenticated)."""
    engine = state.engine
    if engine is None:
        raise ApiError(503, f"the server is not ready ({state.phase}); retry later", code=f"server_{state.phase}")
    cache = engine.prefix_cache
    cleared = {"memory_entries": 0, "disk_entries": 0} if cache is None else await asyncio.to_thread(cache.clear)
    return JSONResponse({"object": "prefix_cache.reset", "enabled": cache is not None, **cleared})
