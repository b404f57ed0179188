"""Route dependencies: the app state and, for model routes, a Serving that is ready (503 otherwise)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tnn.server.embeddings import Embeddings
from tnn.server.errors import ApiError
from tnn.server.serving import Serving
from tnn.server.state import AppState


def get_state(request: Request) -> AppState:
    state = request.app.state.tnn
    assert isinstance(state, AppState)
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_serving(state: StateDep) -> Serving:
    if not state.ready or state.serving is None:
        raise ApiError(503, f"the server is not ready ({state.phase}); retry later", code=f"server_{state.phase}",
                       headers={"Retry-After": "1"})  # fmt: skip
    return state.serving


ServingDep = Annotated[Serving, Depends(get_serving)]


def get_embeddings(state: StateDep) -> Embeddings:
    get_serving(state)  # the same readiness check
    assert state.embeddings is not None
    return state.embeddings


EmbeddingsDep = Annotated[Embeddings, Depends(get_embeddings)]
