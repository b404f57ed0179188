"""What /openapi.json says each route answers, so that it matches what the server sends: the error envelope for
every status a route can return (400 for bad bodies, never FastAPI's 422), /metrics as text/plain, completions
as JSON or an SSE stream. The fuzz test (tests/server/test_fuzz.py) holds the server to it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from tnn.server.schemas import ErrorResponse

ERROR_DESCRIPTIONS = {
    400: "invalid request: `param` names the field",
    401: "missing or wrong API key (only when the server has one)",
    403: "admin routes are off (no admin or API key configured)",
    404: "the model named in the request is not served here",
    408: "the request body was not complete in time",
    413: "request body too large",
    429: "all state slots and the queue are in use: retry after Retry-After seconds",
    431: "too many or too large request headers",
    500: "internal error (the message carries no internals)",
    503: "not ready: loading, draining or stopped",
    504: "the request timed out before its last token",
}
ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds", "schema": {"type": "string"}}},
}
EVERY_ROUTE = (431, 500)
BEHIND_THE_KEY = (*EVERY_ROUTE, 400, 401)  # 400: two Authorization headers
WITH_A_BODY = (*BEHIND_THE_KEY, 404, 408, 413, 503)  # 404: an unknown `model`
GENERATION = (*WITH_A_BODY, 429, 504)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route decorator: the error envelope for each status code."""
    return {
        code: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[code], "headers": ERROR_HEADERS.get(code, {})}
        for code in sorted(set(codes))
    }


def install_openapi(app: FastAPI) -> None:
    """Drop FastAPI's 422 (the server answers validation errors with 400) and its validation-error schemas."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
