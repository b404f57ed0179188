"""`tnn serve` with the compiled decode step: built before /ready (`--native-step wait`), logged, and answering
exactly what the eager server answers; a second server finds the kept library and starts with it at once. The tiny
model (float32) runs the native kernel; served in float64 it runs the AOTInductor step (the kernel is float32).

Greedy tokens must be equal (float32, 1e-5 relative differences in the logits do not flip an argmax of this
model on these prompts; the model-level tolerance is in tests/model/test_native_step.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import ServerProcess

PROMPTS = ["The king", "ROMEO:", "a b c d e f g"]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"),
]


def greedy(url: str) -> list[list[int]]:
    with httpx.Client(base_url=url, timeout=120) as http:
        body = {"prompt": PROMPTS, "max_tokens": 24, "temperature": 0, "logprobs": 1, "ignore_eos": True}
        response = http.post("/v1/completions", json=body)
        response.raise_for_status()
        choices = sorted(response.json()["choices"], key=lambda c: c["index"])
        return [c["logprobs"]["tokens"] for c in choices]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compiled-steps")


def native_server(model_dir: Path, cache_dir: Path, mode: str, *extra: str) -> ServerProcess:
    args = ["--native-step", mode, "--compile-cache-dir", str(cache_dir), "--max-num-seqs", "8", *extra]
    return ServerProcess(model_dir, args=args, env={"TNN_NATIVE_STEP": mode}, ready_timeout=900)


def test_compiled_server_answers_as_the_eager_one_and_says_so(tiny_model_dir: Path, cache_dir: Path) -> None:
    eager = native_server(tiny_model_dir, cache_dir, "off")
    with eager:
        expected = greedy(eager.url)
        assert "eager decode step" in eager.log()
    with native_server(tiny_model_dir, cache_dir, "wait") as compiled:
        assert greedy(compiled.url) == expected
        assert (
            "compiled native decode step (native kernel) for batch <= 8, eager above; prompts prefilled in the kernel"
            in compiled.log()
        )
    assert len(list(cache_dir.glob("kernel-*.so"))) == 1


def stream_seeded(url: str) -> tuple[list[str], int, int]:
    """One streamed request for four seeded choices of 30 tokens (the openai SDK): their texts, the chunks that
    carried text, and the usage's completion tokens."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    texts, chunks, completion = ["", "", "", ""], 0, 0
    stream = client.completions.create(
        model=client.models.list().data[0].id, prompt="ROMEO:", n=4, max_tokens=30, temperature=1.0, seed=7,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            chunks += bool(choice.text)
        if chunk.usage is not None:
            completion = chunk.usage.completion_tokens
    return texts, chunks, completion


def test_decode_runs_stream_what_single_steps_stream(tiny_model_dir: Path, cache_dir: Path) -> None:
    """Four seeded rows decoded in runs (`--decode-run-min-rows 1`) stream the texts and usage of one step per call
    (`--decode-run-ms 0`), in fewer chunks; the server logs that runs are on."""
    with native_server(tiny_model_dir, cache_dir, "wait", "--decode-run-ms", "0") as single:
        texts, single_chunks, usage = stream_seeded(single.url)
        assert "decode runs" not in single.log()
    with native_server(tiny_model_dir, cache_dir, "wait", "--decode-run-min-rows", "1") as runs:
        run_texts, run_chunks, run_usage = stream_seeded(runs.url)
        assert "decode runs: up to 3 steps (20 ms) per native call, with 1 or more running sequences" in runs.log()
    assert run_texts == texts and run_usage == usage == 4 * 30
    assert run_chunks < single_chunks


def test_a_kept_package_is_loaded_at_start(tiny_model_dir: Path, cache_dir: Path) -> None:
    """Runs after the test above has built the package (same module, same cache folder)."""
    if not list(cache_dir.glob("kernel-*.so")):
        pytest.skip("the library was not built (the test above failed)")
    with native_server(tiny_model_dir, cache_dir, "auto") as server:
        log = server.log()
        assert "compiled decode step loaded from" in log
        assert "building it in the background" not in log
        assert len(greedy(server.url)) == len(PROMPTS)


def test_a_damaged_package_is_refused_and_the_eager_step_serves(
    tiny_model_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    libraries = list(cache_dir.glob("kernel-*.so"))
    if not libraries:
        pytest.skip("the library was not built (the first test failed)")
    damaged = tmp_path / libraries[0].name
    damaged.write_bytes(libraries[0].read_bytes()[:10_000])  # a truncated copy, beside the digest of the whole
    digest = libraries[0].with_name(libraries[0].name + ".sha256")
    (tmp_path / digest.name).write_bytes(digest.read_bytes())
    with native_server(tiny_model_dir, tmp_path, "auto") as server:
        log = server.log()
        assert "not used (ValueError" in log and "building it in the background" in log
        assert len(greedy(server.url)) == len(PROMPTS)


def test_a_float64_server_runs_the_aotinductor_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A config the kernel refuses gets the AOTInductor package, answering as the eager float64 server."""
    with native_server(tiny_model_dir, tmp_path, "off", "--dtype", "float64") as eager:
        expected = greedy(eager.url)
    with native_server(tiny_model_dir, tmp_path, "wait", "--dtype", "float64") as compiled:
        assert greedy(compiled.url) == expected
        assert "compiled native decode step (AOTInductor) for batch <= 8" in compiled.log()
        assert "native kernel: the kernel is float32" in compiled.log()
    assert len(list(tmp_path.glob("step-*.pt2"))) == 1
