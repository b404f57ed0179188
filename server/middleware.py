"""Pure ASGI middleware (no BaseHTTPMiddleware: it would get in the way of streaming and disconnect detection):
API-key check and request body size limit."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tnn.server.errors import BodyTooLarge, error_body
from tnn.server.metrics import Metrics

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})  # probes and scraping never need the key
SELF_AUTHENTICATED = "/admin/"  # admin routes check the admin key themselves (tnn.server.routes.admin)


async def _send_error(send: Send, status: int, message: str, code: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """`Authorization: Bearer <key>` on every route but OPEN_PATHS and the paths `is_public` accepts (the
    playground page), compared in constant time."""

    def __init__(
        self, app: ASGIApp, *, api_key: str, metrics: Metrics, is_public: Callable[[str], bool] = lambda path: False
    ) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.metrics = metrics
        self.is_public = is_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        exempt = path in OPEN_PATHS or path.startswith(SELF_AUTHENTICATED) or self.is_public(path)
        if scope["type"] != "http" or exempt or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            self.metrics.errors.labels(code="401").inc()
            message = "missing API key" if not given else "invalid API key"
            await _send_error(send, 401, f"{message}: send 'Authorization: Bearer <key>'", "invalid_api_key",
                              [(b"www-authenticate", b"Bearer")])  # fmt: skip
            return
        await self.app(scope, receive, send)


class RequestLimitMiddleware:
    """431 for more than `max_headers` headers or `max_header_bytes` of them (h11 only bounds *incomplete* header
    blocks); 413 for bodies over `limit` bytes: at once from Content-Length, or while reading a chunked body
    (BodyTooLarge surfaces through FastAPI's body parsing and the error handler turns it into the 413)."""

    def __init__(self, app: ASGIApp, *, limit: int, max_headers: int, max_header_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.limit = limit
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if len(headers) > self.max_headers or sum(len(k) + len(v) for k, v in headers) > self.max_header_bytes:
            self.metrics.errors.labels(code="431").inc()
            message = f"at most {self.max_headers} headers and {self.max_header_bytes} bytes of them"
            await _send_error(send, 431, message, "headers_too_large", [])
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            self.metrics.errors.labels(code="413").inc()
            await _send_error(send, 413, BodyTooLarge.message(self.limit), "payload_too_large", [])
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)
