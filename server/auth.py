"""The one bearer-token check of every authenticated route (API and admin): `Authorization: Bearer <key>`,
the scheme case-insensitive (RFC 7235), any whitespace around the key, the key compared in constant time."""

from __future__ import annotations

import hmac
from enum import Enum


class AuthProblem(Enum):
    MISSING = "missing API key"
    INVALID = "invalid API key"
    DUPLICATE = "several Authorization headers; send exactly one"


def check_bearer(headers: list[bytes], expected: bytes) -> AuthProblem | None:
    """None when the one Authorization header value in `headers` carries `expected`; otherwise what is wrong.
    Two headers are refused, never first- or last-wins: a proxy that appends its own must not decide."""
    if len(headers) > 1:
        return AuthProblem.DUPLICATE
    if not headers:
        return AuthProblem.MISSING
    scheme, _, key = headers[0].strip().partition(b" ")
    matches = hmac.compare_digest(key.strip(), expected)  # always compared: the time says nothing of the scheme
    return None if matches and scheme.lower() == b"bearer" else AuthProblem.INVALID
