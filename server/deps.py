"""Route dependencies: the app state and, for model routes, a Serving that is ready (503 otherwise).

They are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop on every request
(measured in the profile of a streaming load), and none of these blocks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tnn.server.embeddings import Embeddings
from tnn.server.errors import ApiError
from tnn.server.serving import Serving
from tnn.server.state import AppState
from tnn.server.textcheck import invalid_text_path


async def get_state(request: Request) -> AppState:
    state = request.app.state.tnn
    assert isinstance(state, AppState)
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def ready_serving(state: AppState) -> Serving:
    """The Serving of a ready server; 503 otherwise."""
    if not state.ready or state.serving is None:
        raise ApiError(503, f"the server is not ready ({state.phase}); retry later", code=f"server_{state.phase}",
                       headers={"Retry-After": "1"})  # fmt: skip
    return state.serving


async def get_serving(state: StateDep) -> Serving:
    return ready_serving(state)


ServingDep = Annotated[Serving, Depends(get_serving)]


async def get_embeddings(state: StateDep) -> Embeddings:
    ready_serving(state)  # the same readiness check
    assert state.embeddings is not None
    return state.embeddings


EmbeddingsDep = Annotated[Embeddings, Depends(get_embeddings)]


async def reject_invalid_text(request: Request) -> None:
    """400 naming the field when a JSON body holds text that is not valid Unicode (a lone surrogate)."""
    if request.method != "POST":
        return
    try:
        body = await request.json()  # cached: FastAPI parses the body with the same call
    except ValueError:
        return  # not JSON: FastAPI's own parsing answers it
    found = invalid_text_path(body)
    if found is not None:
        path, index = found
        raise ApiError(400, f"{path}: the text is not valid Unicode (a lone UTF-16 surrogate at character {index})",
                       param=path, code="invalid_text")  # fmt: skip
