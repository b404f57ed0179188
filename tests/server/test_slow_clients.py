"""Slow and idle clients against a real `tnn serve` with short limits: dribbled headers, idle sockets, bodies that
never finish, idle keep-alive connections and too many connections are all closed in time (with the error
envelope where an answer can be written), while ordinary requests keep succeeding."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.timeout(180)

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
KEEP_ALIVE_TIMEOUT = 1.0
MAX_CONNECTIONS = 64
SLACK = 1.5  # seconds of scheduling slack on a busy, shared CPU


@pytest.fixture(scope="module")
def guarded(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    args = ["--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
            "--keep-alive-timeout", str(KEEP_ALIVE_TIMEOUT), "--max-connections", str(MAX_CONNECTIONS)]  # fmt: skip
    with ServerProcess(tiny_model_dir, args=args) as process:
        yield process


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def error_of(reply: bytes) -> tuple[int, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)["error"]


def dribble_headers(server: ServerProcess, held: list[float], replies: list[bytes]) -> None:
    """A slowloris: a request line, then one header byte every 0.1 s until the server closes the connection."""
    sock = connect(server)
    start = time.monotonic()
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        while time.monotonic() - start < 30:
            sock.sendall(b"X")
            time.sleep(0.1)
    except OSError:  # closed by the server
        pass
    replies.append(read_until_closed(sock))
    held.append(time.monotonic() - start)
    sock.close()


def test_fifty_header_dribblers_are_closed_in_time_while_requests_succeed(guarded: ServerProcess) -> None:
    held: list[float] = []
    replies: list[bytes] = []
    threads = [threading.Thread(target=dribble_headers, args=(guarded, held, replies)) for _ in range(50)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    with httpx.Client(base_url=guarded.url, timeout=30) as http:  # meanwhile, real work gets done
        assert http.get("/health").status_code == 200
        completion = http.post("/v1/completions", json={"prompt": "To be", "max_tokens": 4})
        assert completion.status_code == 200, completion.text
    for thread in threads:
        thread.join(60)
    assert len(held) == 50
    print(f"\nslowloris: 50 connections held {min(held):.2f}-{max(held):.2f}s (header timeout {HEADER_TIMEOUT}s)")
    assert max(held) < HEADER_TIMEOUT + SLACK
    answered = [error_of(reply) for reply in replies if reply]
    assert answered and all(status == 408 and error["code"] == "header_timeout" for status, error in answered)


def test_an_idle_socket_is_closed_after_the_header_timeout(guarded: ServerProcess) -> None:
    sock = connect(guarded)
    start = time.monotonic()
    reply = read_until_closed(sock)
    held = time.monotonic() - start
    sock.close()
    assert HEADER_TIMEOUT - 0.2 < held < HEADER_TIMEOUT + SLACK
    assert error_of(reply)[0] == 408


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_that_never_finishes_is_408(guarded: ServerProcess, chunked: bool) -> None:
    sock = connect(guarded)
    framing = b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"pro' if chunked else b'Content-Length: 1000\r\n\r\n{"pro'
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing)
    start = time.monotonic()
    reply = read_until_closed(sock)
    held = time.monotonic() - start
    sock.close()
    assert held < BODY_TIMEOUT + SLACK
    status, error = error_of(reply)
    assert status == 408 and error["code"] == "body_timeout"


def test_a_body_dribbled_byte_by_byte_is_cut_at_the_body_timeout(guarded: ServerProcess) -> None:
    """The body deadline is for the whole body, not per chunk: a byte every 0.1 s does not keep it open."""
    sock = connect(guarded)
    sock.sendall(b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n")
    start = time.monotonic()
    try:
        while time.monotonic() - start < 30:
            sock.sendall(b" ")
            time.sleep(0.1)
    except OSError:
        pass
    reply = read_until_closed(sock)
    held = time.monotonic() - start
    sock.close()
    assert held < BODY_TIMEOUT + SLACK
    assert error_of(reply)[0] == 408


def test_an_idle_keep_alive_connection_is_closed(guarded: ServerProcess) -> None:
    sock = connect(guarded)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while not first.endswith(b'{"status":"ok"}'):  # the whole answer (its head and body may come apart)
        first += sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    start = time.monotonic()
    assert read_until_closed(sock) == b""  # closed without another answer
    held = time.monotonic() - start
    sock.close()
    assert KEEP_ALIVE_TIMEOUT - 0.2 < held < KEEP_ALIVE_TIMEOUT + SLACK


def test_connections_beyond_the_cap_get_503_and_are_closed(guarded: ServerProcess) -> None:
    socks = [connect(guarded) for _ in range(MAX_CONNECTIONS + 6)]
    try:
        time.sleep(0.3)
        refused = []
        for sock in socks:
            sock.setblocking(False)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            refused.append(data)
        assert len(refused) >= 6
        status, error = error_of(refused[-1])
        assert status == 503 and error["code"] == "too_many_connections"
    finally:
        for sock in socks:
            sock.close()
    time.sleep(HEADER_TIMEOUT + 0.5)  # the idle ones were closed by the header timeout: room again
    assert httpx.get(guarded.url + "/health", timeout=10).status_code == 200
