"""Retry policy: which failures are retried, and how long to wait before the next attempt.

Retried: connection-level failures before any response arrived, and HTTP 429 / 503 answers. The wait is the server's
`Retry-After` when it sent one (capped), otherwise exponential backoff with jitter. A streaming request is retried
only until its 200 status line arrives; once the stream has started nothing is retried (the caller may already have
shown part of the answer).
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field

import httpx

__all__ = ["RETRYABLE_TRANSPORT_ERRORS", "RetryPolicy", "parse_retry_after"]

# Failures where the request most likely never reached the model, or the connection died before any answer.
RETRYABLE_TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry, and the backoff schedule.

    Attempt n (0-based) waits `min(initial_delay * 2**n, max_delay)` scaled by a random factor in
    `[1 - jitter, 1]`, unless the server sent `Retry-After`, which wins (capped at `max_retry_after`).
    `max_retries=0` disables retries.
    """

    max_retries: int = 2
    initial_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = 60.0
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.initial_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError(
                f"delays must be >= 0, got initial_delay={self.initial_delay}, max_delay={self.max_delay}, "
                f"max_retry_after={self.max_retry_after}"
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry number `attempt + 1` (attempt is 0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        backoff = min(self.initial_delay * 2.0**attempt, self.max_delay)
        return backoff * (1.0 - self.jitter * random.random())

    def should_retry_status(self, status_code: int) -> bool:
        """Whether an HTTP answer with this status is worth another attempt."""
        return status_code in self.retry_statuses


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a `Retry-After` header (delay in seconds, or an HTTP date) into seconds; None when absent or invalid."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(seconds, 0.0) if seconds == seconds else None  # NaN -> None
