"""`tnn generate` and `tnn chat` as subprocesses against a real `tnn serve`, and the no-torch import guarantee."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.clients.helpers import API_KEY, run_tnn
from tests.support import ServerProcess, free_port

PROMPT = "To be, or not to be"
SAMPLING = ["--max-tokens", "16", "--temperature", "1.0", "--seed", "3"]


def generate(server: ServerProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_tnn("generate", *args, "--url", server.url, *SAMPLING, stdin=stdin, env={"TNN_API_KEY": API_KEY})


def test_generate_streamed_equals_no_stream_and_reports_stats(tnn_server: ServerProcess) -> None:
    streamed = generate(tnn_server, PROMPT)
    whole = generate(tnn_server, PROMPT, "--no-stream")
    assert streamed.returncode == 0 and whole.returncode == 0, streamed.stderr + whole.stderr
    assert streamed.stdout == whole.stdout
    assert len(streamed.stdout) > 1 and streamed.stdout.endswith("\n")
    assert "completion_tokens=" in streamed.stderr and "ttft=" in streamed.stderr and "tokens/s" in streamed.stderr
    assert "completion_tokens=" in whole.stderr and "tokens/s" in whole.stderr


def test_generate_dash_reads_the_prompt_from_stdin(tnn_server: ServerProcess) -> None:
    from_arg = generate(tnn_server, PROMPT)
    from_stdin = generate(tnn_server, "-", stdin=PROMPT + "\n")
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == from_arg.stdout


def test_generate_json(tnn_server: ServerProcess) -> None:
    plain = generate(tnn_server, PROMPT, "--no-stream")
    for extra in ([], ["--no-stream"]):
        result = generate(tnn_server, PROMPT, "--json", *extra)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert data["text"] + "\n" == plain.stdout
        assert data["usage"]["completion_tokens"] > 0 and data["timing"]["total_s"] > 0


def test_generate_exit_codes(tnn_server: ServerProcess) -> None:
    usage = run_tnn("generate", "--max-tokens", "many", PROMPT)
    assert usage.returncode == 2 and "invalid int value" in usage.stderr
    empty_stdin = run_tnn("generate", "-", stdin="")
    assert empty_stdin.returncode == 2 and "stdin is empty" in empty_stdin.stderr
    wrong_key = run_tnn("generate", PROMPT, "--url", tnn_server.url, "--api-key", "wrong", "--model", "m")
    assert wrong_key.returncode == 1 and "tnn generate: error: 401" in wrong_key.stderr
    bad_value = generate(tnn_server, PROMPT, "--top-p", "2")
    assert bad_value.returncode == 1 and "tnn generate: error: 400" in bad_value.stderr and "top_p" in bad_value.stderr
    closed = run_tnn("generate", PROMPT, "--url", f"http://127.0.0.1:{free_port()}", "--model", "m")
    assert closed.returncode == 1 and "cannot reach" in closed.stderr


def test_chat_two_piped_turns_then_eof(tnn_server: ServerProcess) -> None:
    result = run_tnn(
        "chat",
        "--url",
        tnn_server.url,
        "--max-tokens",
        "8",
        "--seed",
        "1",
        stdin="Hello\nAnd then?\n",
        env={"TNN_API_KEY": API_KEY},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") >= 2 and result.stderr == ""
    one_shot = run_tnn(
        "chat", "-", "--url", tnn_server.url, "--max-tokens", "8", stdin="Hello\n", env={"TNN_API_KEY": API_KEY}
    )
    assert one_shot.returncode == 0 and one_shot.stdout.endswith("\n"), one_shot.stderr


def test_clients_and_their_cli_never_import_torch() -> None:
    code = (
        "import sys, tnn.clients, tnn.cli.main, tnn.clients.cli_generate, tnn.clients.cli_chat; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
