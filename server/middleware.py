"""Pure ASGI middleware (no BaseHTTPMiddleware: it would get in the way of streaming and disconnect detection):
API-key check, request header/body limits (size and read time), and the one place an unexpected exception is
logged and answered with a 500."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tnn.server.auth import AuthProblem, check_bearer
from tnn.server.errors import BodyTimeout, BodyTooLarge, error_body
from tnn.server.metrics import Metrics

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})  # probes and scraping never need the key
SELF_AUTHENTICATED = "/admin/"  # admin routes check the admin key themselves (tnn.server.routes.admin)


async def _send_error(send: Send, status: int, message: str, code: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """`Authorization: Bearer <key>` on every route but OPEN_PATHS and the paths `is_public` accepts (the
    playground page), checked by `tnn.server.auth.check_bearer` (as the admin routes are). Two Authorization
    headers are refused (400)."""

    def __init__(
        self, app: ASGIApp, *, api_key: str, metrics: Metrics, is_public: Callable[[str], bool] = lambda path: False
    ) -> None:
        self.app = app
        self.expected = api_key.encode()
        self.metrics = metrics
        self.is_public = is_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        exempt = path in OPEN_PATHS or path.startswith(SELF_AUTHENTICATED) or self.is_public(path)
        if scope["type"] != "http" or exempt or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        problem = check_bearer([value for name, value in scope["headers"] if name == b"authorization"], self.expected)
        if problem is AuthProblem.DUPLICATE:
            self.metrics.errors.labels(code="400").inc()
            await _send_error(send, 400, problem.value, "duplicate_authorization", [])
            return
        if problem is not None:
            self.metrics.errors.labels(code="401").inc()
            await _send_error(send, 401, f"{problem.value}: send 'Authorization: Bearer <key>'", "invalid_api_key",
                              [(b"www-authenticate", b"Bearer")])  # fmt: skip
            return
        await self.app(scope, receive, send)


class RequestLimitMiddleware:
    """431 for more than `max_headers` headers or `max_header_bytes` of them (h11 only bounds *incomplete* header
    blocks); 413 for bodies over `limit` bytes: at once from Content-Length, or while reading a chunked body;
    408 for a body not complete `body_timeout` seconds after its headers (a slow or stalled upload). BodyTooLarge
    and BodyTimeout surface through FastAPI's body parsing; the error handler turns them into the answers."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        max_headers: int,
        max_header_bytes: int,
        body_timeout: float,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.limit = limit
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.body_timeout = body_timeout
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
        body_done = False
        deadline = time.monotonic() + self.body_timeout

        async def limited_receive() -> Message:
            nonlocal seen, body_done
            if body_done:  # afterwards receive() only waits for the disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BodyTimeout(self.body_timeout) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


class UnexpectedErrorMiddleware:
    """An exception no handler turned into an answer: logged once here, with the request, and answered with the
    500 envelope (no internals) if the response has not started. Not re-raised: uvicorn would log it again."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            request_id = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
            logger.exception("unhandled error on %s %s %s", scope["method"], scope["path"], request_id)
            self.metrics.errors.labels(code="500").inc()
            if not started:  # once the response started, the client sees the connection end early
                await _send_error(send, 500, "internal server error", "internal_error", [])
