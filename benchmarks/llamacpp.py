"""llama.cpp for benchmarks/vs_llamacpp.py: its build, a GPT-2 matched to a TNN as GGUF, `llama-server`, `llama-bench`.

llama.cpp comes from the llama-cpp-python source distribution (its vendored copy), downloaded with pip into a cache
directory outside the repository (default ~/.cache/tnn-bench, or $TNN_BENCH_CACHE) and built there once: only
`llama-server` and `llama-bench`, native CPU flags, no curl/openssl, no web UI download. None of it is committed.

The GGUF comes from the vendored `convert_hf_to_gguf.py`, imported in-process with two patches (their file is not
edited): its GPT-2 writer hard-codes the MLP width at 4 x n_embd (ours is n_inner), and it refuses a tokenizer whose
hash it does not know; ours is a byte-level BPE with GPT-2's own pre-tokenizer regex, so it is mapped to "gpt-2".
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

logger = logging.getLogger(__name__)

CACHE = Path(os.environ.get("TNN_BENCH_CACHE", Path.home() / ".cache" / "tnn-bench"))
SDIST_GLOB = "llama_cpp_python-*.tar.gz"
TARGETS = ("llama-server", "llama-bench")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",  # this CPU's instruction set, as a user building for their own machine would
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # else the configure step downloads the web UI
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)


@dataclass(frozen=True)
class LlamaBuild:
    source: Path  # the vendored llama.cpp checkout
    server: Path
    bench: Path
    version: str  # llama-cpp-python's version
    commands: tuple[str, ...]  # what ran (empty when the build was reused)
    build_seconds: float  # 0 when reused


def sdist_path(cache: Path) -> Path | None:
    """The newest llama-cpp-python source distribution in the cache, if any."""
    found = sorted(cache.glob(SDIST_GLOB), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def version_of(sdist: Path) -> str:
    return sdist.name.removeprefix("llama_cpp_python-").removesuffix(".tar.gz")


def llama_source(cache: Path, *, download: bool) -> Path | None:
    """The vendored llama.cpp source tree (downloaded and unpacked into `cache` when `download`); None without it."""
    sdist = sdist_path(cache)
    if sdist is None and download:
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "llama-cpp-python",
                   "-d", str(cache)]  # fmt: skip
        logger.info("downloading the llama-cpp-python source distribution: %s", " ".join(command))
        subprocess.run(command, check=True)
        sdist = sdist_path(cache)
    if sdist is None:
        return None
    root = cache / sdist.name.removesuffix(".tar.gz")
    source = root / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").exists():
        with tarfile.open(sdist) as archive:
            archive.extractall(cache, filter="data")
    return source


def build_llama(cache: Path = CACHE, *, build: bool = True) -> LlamaBuild | None:
    """llama-server and llama-bench, built once per llama-cpp-python version under `cache` and reused.

    `build=False` never downloads or compiles: the cached binaries, or None."""
    source = llama_source(cache, download=build)
    if source is None:
        return None
    version = version_of(sdist_path(cache))  # type: ignore[arg-type]
    out = cache / f"build-{version}"
    server, bench = (out / "bin" / name for name in TARGETS)
    if server.exists() and bench.exists():
        return LlamaBuild(source, server, bench, version, (), 0.0)
    if not build:
        return None
    commands = (
        ["cmake", "-S", str(source), "-B", str(out), *CMAKE_FLAGS],
        ["cmake", "--build", str(out), "--config", "Release", "--target", *TARGETS, "-j2"],
    )
    start = time.perf_counter()
    for command in commands:
        logger.info("%s", " ".join(command))
        subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    logger.info("llama.cpp %s built in %.0f s", version, seconds)
    return LlamaBuild(source, server, bench, version, tuple(" ".join(c) for c in commands), seconds)


# --- the matched GPT-2 ----------------------------------------------------------------------------------------------


def matched_gpt2_config(training: dict[str, Any], *, n_positions: int) -> Any:
    """GPT2Config of the GPT-2 that `tnn train --arch gpt2` builds beside a TNN of this training config (same width,
    depth, vocabulary, 64-wide heads, MLP widened to the TNN's parameter count), positions extended to `n_positions`."""
    from tnn.training.train import TrainConfig, build_model

    train = TrainConfig(**{**training, "arch": "gpt2", "dropout": 0.0})
    config = build_model(train, eos=0, pad=1).config
    config.n_positions = n_positions
    config.n_ctx = n_positions  # convert_hf_to_gguf reads n_ctx for the context length
    return config


def write_hf_gpt2(config: Any, tokenizer_dir: Path, out: Path, *, seed: int = 0) -> Path:
    """A random-weight GPT2LMHeadModel of `config` with `tokenizer_dir`'s tokenizer files, saved with save_pretrained."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    return out


def import_converter(source: Path) -> ModuleType:
    """The vendored convert_hf_to_gguf module (with its `conversion` package and gguf-py), patched."""
    for path in (source / "gguf-py", source):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", source / "convert_hf_to_gguf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import conversion  # type: ignore[import-not-found]  # the vendored package, on sys.path now

    patch_converter(conversion)
    return module


def patch_converter(conversion: ModuleType) -> None:
    """The two changes our GPT-2 needs, applied to the converter's classes (idempotent)."""
    gpt2 = conversion.get_model_class("GPT2LMHeadModel")
    if getattr(gpt2, "_tnn_patched", False):
        return
    write_parameters = gpt2.set_gguf_parameters

    def set_gguf_parameters(self: Any) -> None:
        # their writer passes 4 * n_embd to add_feed_forward_length; GPT2Config.n_inner (None: 4 * n_embd) is the width
        n_inner = self.hparams.get("n_inner") or 4 * self.hparams["n_embd"]
        writer = self.gguf_writer
        add_feed_forward_length = writer.add_feed_forward_length
        writer.add_feed_forward_length = lambda _length: add_feed_forward_length(n_inner)
        try:
            write_parameters(self)
        finally:
            del writer.add_feed_forward_length

    text_model = conversion.base.TextModel
    vocab_base_pre = text_model.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return vocab_base_pre(self, tokenizer)
        except NotImplementedError:
            if not is_gpt2_pre_tokenizer(json.loads(tokenizer.backend_tokenizer.to_str())):
                raise
            return "gpt-2"  # an unknown vocabulary split by GPT-2's own regex: llama.cpp's "gpt-2" pre-tokenizer

    gpt2.set_gguf_parameters = set_gguf_parameters
    text_model.get_vocab_base_pre = get_vocab_base_pre
    gpt2._tnn_patched = True


def is_gpt2_pre_tokenizer(tokenizer_json: dict[str, Any]) -> bool:
    """Whether a tokenizer.json splits text exactly as GPT-2 does: one ByteLevel pre-tokenizer with its regex."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False)


def convert_to_gguf(source: Path, hf_dir: Path, out: Path) -> Path:
    """hf_dir (a GPT2LMHeadModel checkpoint) -> out (f32 GGUF) with the vendored, patched converter."""
    converter = import_converter(source)
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(hf_dir), "--outfile", str(out), "--outtype", "f32"]
    try:
        converter.main()
    finally:
        sys.argv = argv
    return out


# --- running llama.cpp ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def llama_server(
    binary: Path, gguf: Path, *, port: int, slots: int, context: int, threads: int, ready_timeout: float = 300.0
) -> Iterator[str]:
    """`llama-server` on 127.0.0.1:port with `slots` parallel sequences sharing `context` tokens of KV cache and
    continuous batching, no host-memory prompt cache (every prompt is unique, so it cannot help); yields its URL once
    /health answers 200, stops it (SIGTERM, then SIGKILL) on exit. Its log is kept (path logged) when something
    failed."""
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
               "-tb", str(threads), "-np", str(slots), "-c", str(context), "--cont-batching",
               "--no-jinja", "--chat-template", "chatml", "--cache-ram", "0"]  # fmt: skip  # completions only: their jinja parser refuses our template
    url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {process.returncode}:\n{Path(log.name).read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama-server not ready after {ready_timeout}s:\n{Path(log.name).read_text()}")
            time.sleep(0.1)
        yield url
    except BaseException:
        logger.error("llama-server's log: %s", log.name)
        raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    Path(log.name).unlink(missing_ok=True)


def llama_bench(
    binary: Path, gguf: Path, *, threads: int, prompts: list[int], depths: list[int], gen: int, repetitions: int
) -> list[dict[str, Any]]:
    """llama-bench's prompt processing at `prompts` tokens and its generation of `gen` tokens after `depths` tokens of
    context (none when `gen` is 0): one row each (test, tokens/s mean and stddev)."""
    rows = []
    runs = [["-p", ",".join(map(str, prompts)), "-n", "0"]]
    if gen:
        runs.append(["-p", "0", "-n", str(gen), "-d", ",".join(map(str, depths))])
    for args in runs:
        command = [str(binary), "-m", str(gguf), "-t", str(threads), "-r", str(repetitions), "-o", "json", *args]
        logger.info("%s", " ".join(command))
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        for record in json.loads(result.stdout):
            kind = "pp" if record["n_gen"] == 0 else "tg"
            depth = record.get("n_depth", 0)
            rows.append({
                "test": f"pp{record['n_prompt']}" if kind == "pp" else f"tg{record['n_gen']} @ d{depth}",
                "kind": kind,
                "tokens": record["n_prompt"] if kind == "pp" else record["n_gen"],
                "depth": depth,
                "tokens_per_s": record["avg_ts"],
                "stddev_tokens_per_s": record["stddev_ts"],
            })  # fmt: skip
    return rows
