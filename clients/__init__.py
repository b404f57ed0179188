"""tnn.clients: HTTP clients for tnn-serve (and any OpenAI-compatible server), and `tnn generate` / `tnn chat`.

Depends on httpx only (never torch). Quick use::

    from tnn.clients import Client

    with Client("http://127.0.0.1:8000") as client:
        print(client.complete("Once upon a time", max_tokens=32, seed=0).text)
        for delta in client.stream_complete("Once upon a time", max_tokens=32):
            print(delta, end="", flush=True)
"""

from tnn.clients.async_client import AsyncClient, AsyncCompletionStream
from tnn.clients.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    StreamError,
    TnnError,
)
from tnn.clients.protocol import GenerationParams
from tnn.clients.retry import RetryPolicy
from tnn.clients.sync_client import Client, CompletionStream
from tnn.clients.types import ChatMessage, Completion, Message, ModelInfo, Usage

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncCompletionStream",
    "AuthenticationError",
    "BadRequestError",
    "ChatMessage",
    "Client",
    "Completion",
    "CompletionStream",
    "GenerationParams",
    "InvalidResponseError",
    "Message",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "StreamError",
    "TnnError",
    "Usage",
]
