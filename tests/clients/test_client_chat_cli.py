"""`tnn chat` against a stub server that records what it was sent: history across turns, and Ctrl-C stopping an
answer without quitting. (The same loop runs against the real server in test_client_cli.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.clients.helpers import StubReply, StubRequest, StubServer, run_tnn


def chat_chunks(*texts: str) -> list[dict[str, object]]:
    first = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    rest = [{"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]} for t in texts]
    return [first, *rest, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]


def numbered_answers(request: StubRequest) -> StubReply:
    """Answer turn n with `answer n`."""
    turn = sum(m["role"] == "user" for m in request.body["messages"])
    return StubReply.sse(chat_chunks("answer ", str(turn)))


def test_chat_keeps_history_over_piped_turns_and_exits_0_at_eof() -> None:
    with StubServer(numbered_answers) as stub:
        result = run_tnn(
            "chat", "--url", stub.url, "--model", "stub", "--system", "be brief", stdin="hello\n\nhow are you\n"
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "answer 1\nanswer 2\n"
    assert [r.body["messages"] for r in stub.requests] == [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "answer 1"},
            {"role": "user", "content": "how are you"},
        ],
    ]
    assert all(r.body["stream"] is True for r in stub.requests)


def test_chat_reports_a_failed_turn_drops_it_and_exits_1() -> None:
    def script(request: StubRequest) -> StubReply:
        if request.body["messages"][-1]["content"] == "bad":
            return StubReply.json({"error": {"message": "no such thing", "type": "invalid_request_error"}}, status=400)
        return numbered_answers(request)

    with StubServer(script) as stub:
        result = run_tnn("chat", "--url", stub.url, "--model", "stub", stdin="bad\ngood\n")
    assert result.returncode == 1
    assert "tnn chat: error: 400: no such thing" in result.stderr
    assert result.stdout == "answer 1\n"
    assert stub.requests[-1].body["messages"] == [{"role": "user", "content": "good"}]


def test_ctrl_c_stops_the_answer_but_not_the_chat() -> None:
    def script(request: StubRequest) -> StubReply:
        if len(request.body["messages"]) == 1:  # first turn: a slow, long answer
            return StubReply.sse(chat_chunks(*["tick "] * 400), delay=0.025)
        return StubReply.sse(chat_chunks("second answer"))

    with StubServer(script) as stub:
        env = {k: v for k, v in os.environ.items() if k not in {"TNN_URL", "TNN_API_KEY"}}
        process = subprocess.Popen(
            [sys.executable, "-m", "tnn.cli.main", "chat", "--url", stub.url, "--model", "stub"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**env, "PYTHONIOENCODING": "utf-8"},
            # a test run started in the background by a shell without job control inherits SIGINT ignored, and
            # Python then never raises KeyboardInterrupt: give the CLI the disposition a terminal would
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(b"first\n")
            process.stdin.flush()
            seen = b""
            while b"tick tick" not in seen:  # the answer is streaming
                seen += os.read(process.stdout.fileno(), 1024)
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(b"second\n", timeout=30)
        finally:
            process.kill()
        deadline = time.monotonic() + 5
        while not stub.requests[0].disconnected and time.monotonic() < deadline:
            time.sleep(0.05)
    assert process.returncode == 0, err
    assert b"[interrupted]" in err
    assert (seen + out).decode().endswith("\nsecond answer\n")
    first, second = stub.requests
    assert first.disconnected  # closing the stream told the server to stop
    partial = second.body["messages"][1]
    assert (
        partial["role"] == "assistant"
        and partial["content"].startswith("tick tick")
        and len(partial["content"]) < 400 * 5
    )
    assert second.body["messages"][2] == {"role": "user", "content": "second"}
