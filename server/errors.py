"""The one error envelope, `{"error": {"message", "type", "param", "code"}}`, and the handlers that produce it.

Body validation errors are 400 (not FastAPI's 422) with `param` naming the field; unexpected exceptions are a
500 whose message carries no internals (tnn.server.middleware.UnexpectedErrorMiddleware, logged once there).
Every error answer is counted in tnn_errors_total{code=<status>}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tnn.server.metrics import Metrics
from tnn.server.schemas import EXTENSIONS, ErrorInfo, ErrorResponse
from tnn.server.tokenizer import TokenizerSkipped

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


# the tags pydantic gives plain-typed union members (`stop: str | list[str]` -> loc stop.str); they are not fields
UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})

# pydantic error types meaning "wrong JSON type" (strict bodies do not coerce)
STRICT_TYPE_ERRORS = frozenset(
    {
        "int_type",
        "float_type",
        "bool_type",
        "string_type",
        "list_type",
        "dict_type",
        "model_type",
        "model_attributes_type",
    }
)


class BodyTooLarge(Exception):
    """Raised while reading a request body past the size limit (BodyLimitMiddleware)."""

    def __init__(self, limit: int) -> None:
        super().__init__(self.message(limit))
        self.limit = limit

    @staticmethod
    def message(limit: int) -> str:
        return f"request body larger than {limit} bytes"


class BodyTimeout(Exception):
    """Raised while reading a request body that is not complete in time (RequestLimitMiddleware)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"the request body was not complete {timeout:g}s after its headers")


class ApiError(Exception):
    """An error answer: raise it anywhere in a route; the handler turns it into the envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    info = ErrorInfo(message=message, type=ERROR_TYPES.get(status, "server_error"), param=param, code=code)
    return ErrorResponse(error=info).model_dump()


def error_response(error: ApiError, metrics: Metrics) -> JSONResponse:
    metrics.errors.labels(code=str(error.status)).inc()
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def sse_error(error: ApiError, metrics: Metrics) -> str:
    """An error after streaming began: the status is already 200, so it travels as an SSE event."""
    metrics.errors.labels(code=str(error.status)).inc()
    return f"data: {json.dumps(error.body())}\n\n"


def validation_error(errors: Sequence[Any]) -> ApiError:
    """The first pydantic error as a 400, with `param` the dotted field path (without the leading "body")."""
    first = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(
            400, f"invalid JSON body: {first.get('ctx', {}).get('error', first['msg'])}", code="invalid_json"
        )
    # a union adds its member's tag to the path (prompt.constrained-str.0): the path ends at the first such tag
    fields: list[str] = []
    for part in loc:
        if not (part.isidentifier() or part.isdigit()) or part in UNION_TAGS:
            break
        fields.append(part)
    param = ".".join(fields) or None
    if first.get("type") == "extra_forbidden":
        extensions = f"; supported extensions: {', '.join(EXTENSIONS)}" if len(fields) == 1 else ""
        return ApiError(400, f"Unknown parameter: {param!r}{extensions}", param=param, code="unknown_parameter")
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    if first.get("type") in STRICT_TYPE_ERRORS:  # strict bodies: say what arrived ("5" is a string, not 5)
        message += f", got {type(first.get('input')).__name__} {json.dumps(first.get('input'), default=str)[:80]}"
    return ApiError(
        400, message, param=param, code="invalid_type" if first.get("type") in STRICT_TYPE_ERRORS else "invalid_value"
    )


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc, metrics)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc.errors()), metrics)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, BodyTooLarge):  # FastAPI wraps errors raised while reading the body
            return error_response(ApiError(413, str(exc.__cause__), code="payload_too_large"), metrics)
        if isinstance(exc.__cause__, BodyTimeout):  # the unread rest of the body: the connection cannot be reused
            error = ApiError(408, str(exc.__cause__), code="body_timeout", headers={"Connection": "close"})
            return error_response(error, metrics)
        return error_response(ApiError(exc.status_code, str(exc.detail), headers=exc.headers), metrics)

    async def on_tokenizer_skipped(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TokenizerSkipped)
        return error_response(ApiError(400, str(exc), param=exc.param, code="tokenizer_skipped"), metrics)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(TokenizerSkipped, on_tokenizer_skipped)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
