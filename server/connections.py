"""Connection-level limits that uvicorn's h11 protocol lacks, so that slow or hostile clients cannot hold the
server: a deadline for each request's headers (slowloris: a 408 and the connection closed), a cap on open
connections (503, closed at once), and the error envelope instead of uvicorn's plain-text 400 for a malformed
request or a header block larger than h11 accepts (431). Idle keep-alive connections are bounded by uvicorn's
`timeout_keep_alive`, request bodies by RequestLimitMiddleware's body timeout.

Refusals are written straight to the socket (the request never reached the app) and closed after a short linger:
reading and discarding what the client still sends, so that our answer is not lost to a TCP reset.

uvicorn's own options do not cover this: it has no deadline for a request head (`timeout_keep_alive` only bounds
idle connections between requests), and `limit_concurrency` answers a plain-text 503 and counts running requests as
well as connections. So this subclasses uvicorn's H11Protocol and uses its internals (`connections`, `conn`, `flow`,
`send_400_response`, `handle_events`); pyproject.toml bounds uvicorn to the releases this was tested with.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tnn.server.errors import error_body
from tnn.server.metrics import Metrics

LINGER = 1.0  # seconds a refused connection is read (and discarded) before it is closed


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap (configure with `guarded_protocol`)."""

    header_timeout: float = 10.0
    max_connections: int = 1024
    metrics: Metrics | None = None

    _header_timer: asyncio.TimerHandle | None = None
    _linger_timer: asyncio.TimerHandle | None = None
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(503, f"more than {self.max_connections} open connections; retry later",
                         "too_many_connections", [("Retry-After", "1")])  # fmt: skip
            return
        self._arm_header_timer()  # also bounds a connection that never sends a byte

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: discard
        super().data_received(data)
        if not self._refused and self.conn.their_state is h11.IDLE and self._header_timer is None:
            self._arm_header_timer()  # the first bytes of the next request on a kept-alive connection

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a whole request head arrived (or the connection failed)
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """h11 refused the request: 431 when the header block outgrew its limit, else 400; as the envelope."""
        buffered, _ = self.conn.trailing_data
        limit = self.config.h11_max_incomplete_event_size
        if limit is not None and len(buffered) > limit:
            self._refuse(431, f"the request head is larger than {limit} bytes", "headers_too_large", [])
        else:
            self._refuse(400, "invalid HTTP request", "invalid_http_request", [])

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._refuse(408, f"no complete request head within {self.header_timeout:g}s", "header_timeout", [])

    def _refuse(self, status: int, message: str, code: str, headers: list[tuple[str, str]]) -> None:
        """Write an error answer outside any request cycle, then close after lingering."""
        self._refused = True
        self._cancel_header_timer()
        if self.metrics is not None:
            self.metrics.errors.labels(code=str(status)).inc()
        body = json.dumps(error_body(status, message, code=code)).encode()
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
                 f"content-length: {len(body)}", "connection: close", *(f"{k}: {v}" for k, v in headers)]  # fmt: skip
        self.transport.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER, self.transport.close)


def guarded_protocol(*, header_timeout: float, max_connections: int, metrics: Metrics) -> type[GuardedH11Protocol]:
    """A GuardedH11Protocol class with these limits, for `uvicorn.Config(http=...)`."""
    limits = {"header_timeout": header_timeout, "max_connections": max_connections, "metrics": metrics}
    return type("ConfiguredH11Protocol", (GuardedH11Protocol,), limits)
