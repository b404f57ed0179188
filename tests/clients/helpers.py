"""Test helpers for the client tests: a scripted stub HTTP server and a runner for the `tnn` command line.

The stub is a stdlib `ThreadingHTTPServer` on 127.0.0.1 whose answers a test scripts with a function; it covers what
a healthy tnn-serve never does on demand (429 then success, an endless slow stream) and records what the client sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "client-test-key"  # the key the shared tnn serve requires
REQUEST_TIMEOUT = 3.0  # seconds after which the shared tnn serve cuts a request off


@dataclass
class StubReply:
    """What the stub sends: a status, headers, and a body (bytes, or chunks written with `delay` between them)."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> StubReply:
        return cls(status, json.dumps(data).encode(), {"content-type": "application/json", **(headers or {})})

    @classmethod
    def sse(cls, chunks: Iterable[dict[str, Any]], *, delay: float = 0.0) -> StubReply:
        """An OpenAI event stream of `chunks` then `[DONE]`, each event `delay` seconds after the previous one."""
        events = [f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks]
        return cls(200, [*events, b"data: [DONE]\n\n"], {"content-type": "text/event-stream"}, delay)


@dataclass
class StubRequest:
    method: str
    path: str
    body: Any
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    disconnected: bool = False  # the client closed the connection before the whole reply was written


class StubServer:
    """HTTP/1.0 server on 127.0.0.1 answering every request with `script(request)`; `requests` records them."""

    def __init__(self, script: Callable[[StubRequest], StubReply]) -> None:
        self.script = script
        self.requests: list[StubRequest] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                self._answer(None)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                self._answer(json.loads(raw) if raw else None)

            def _answer(self, body: Any) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                request = StubRequest(self.command, self.path, body, headers)
                stub.requests.append(request)
                reply = stub.script(request)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    for chunk in [reply.body] if isinstance(reply.body, bytes) else reply.body:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        time.sleep(reply.delay)
                except (BrokenPipeError, ConnectionResetError):
                    request.disconnected = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def run_tnn(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run the `tnn` command line in a subprocess (without the caller's TNN_URL / TNN_API_KEY unless given)."""
    base_env = {k: v for k, v in os.environ.items() if k not in {"TNN_URL", "TNN_API_KEY"}}
    return subprocess.run(
        [sys.executable, "-m", "tnn.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**base_env, "PYTHONIOENCODING": "utf-8", **(env or {})},
        timeout=timeout,
    )
