"""Exceptions raised by the tnn clients, and the mapping from HTTP error responses to them.

Every server error carries the OpenAI error fields (`message`, `type`, `param`, `code`) and the HTTP status. The
envelope `{"error": {"message", "type", "param", "code"}}` is parsed first; flat `{"error": "...", "error_type": ...}`
(TGI), FastAPI's `{"detail": ...}` and plain-text bodies are tolerated so the client works with any server.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "InvalidResponseError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "StreamError",
    "TnnError",
    "error_from_response",
]


class TnnError(Exception):
    """Base class of every error raised by `tnn.clients`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIConnectionError(TnnError):
    """The server could not be reached (refused, reset, DNS), after any retries."""


class APITimeoutError(APIConnectionError):
    """The request timed out (connect, read, write or pool timeout)."""


class InvalidResponseError(TnnError):
    """The server answered with something that is not the expected OpenAI-compatible shape."""


class APIError(TnnError):
    """The server answered with an error: the HTTP status plus the OpenAI error fields.

    `code` is a string or an int (OpenAI sends strings or null; vLLM sends the HTTP status).
    `retry_after` is the parsed `Retry-After` header in seconds, when the server sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        type: str | None = None,
        param: str | None = None,
        code: str | int | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.body = body

    def __str__(self) -> str:
        details = ", ".join(
            f"{name}={value!r}"
            for name, value in (("type", self.type), ("param", self.param), ("code", self.code))
            if value is not None
        )
        return f"{self.status_code}: {self.message}" + (f" ({details})" if details else "")


class BadRequestError(APIError):
    """400 (or 422): the request was invalid; `param` names the offending field when the server says which."""


class AuthenticationError(APIError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIError):
    """403: the key is valid but not allowed to do this."""


class NotFoundError(APIError):
    """404: unknown route or model."""


class RateLimitError(APIError):
    """429: the server is overloaded or the client is rate limited; see `retry_after`."""


class ServerError(APIError):
    """5xx: the server failed."""


class ServiceUnavailableError(ServerError):
    """503: the server is not ready, draining, or its queue is full; see `retry_after`."""


class StreamError(APIError):
    """An error event (`data: {"error": {...}}`) arrived after the stream had started (HTTP status already 200)."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: BadRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def _error_class(status_code: int) -> type[APIError]:
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return ServerError if status_code >= 500 else APIError


def parse_error_body(body: Any) -> dict[str, Any]:
    """Return `{"message", "type", "param", "code"}` (values may be None) from a decoded error body of any style."""
    fields: dict[str, Any] = {"message": None, "type": None, "param": None, "code": None}
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):  # OpenAI envelope
            fields.update({key: error.get(key) for key in fields})
        elif isinstance(error, str):  # TGI / Ollama: flat
            fields["message"] = error
            fields["type"] = body.get("error_type")
        elif "detail" in body:  # FastAPI default
            detail = body["detail"]
            fields["message"] = detail if isinstance(detail, str) else json.dumps(detail)
        elif "message" in body:
            fields.update({key: body.get(key) for key in fields})
    elif isinstance(body, str) and body.strip():
        fields["message"] = body.strip()
    if fields["param"] is not None and not isinstance(fields["param"], str):
        fields["param"] = str(fields["param"])
    if fields["code"] is not None and not isinstance(fields["code"], str | int):
        fields["code"] = str(fields["code"])
    return fields


def error_from_response(status_code: int, content: bytes, *, retry_after: float | None = None) -> APIError:
    """Build the typed exception for an HTTP error response (status >= 400) from its raw body."""
    text = content.decode("utf-8", errors="replace")
    try:
        body: Any = json.loads(text) if text else None
    except json.JSONDecodeError:
        body = text
    fields = parse_error_body(body)
    message = fields.pop("message") or f"HTTP {status_code} with no error message"
    return _error_class(status_code)(message, status_code=status_code, retry_after=retry_after, body=body, **fields)


def stream_error(error: Any, *, status_code: int = 200) -> StreamError:
    """Build a `StreamError` from the `error` member of an SSE error event (an object or a bare string)."""
    fields = parse_error_body({"error": error})
    message = fields.pop("message") or "the server reported an error during streaming"
    return StreamError(message, status_code=status_code, body=error, **fields)
