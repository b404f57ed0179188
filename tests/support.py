"""Test support shared by the server and client suites: a tiny model directory and a real `tnn serve` process.

    from tests.support import ServerProcess, make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "tiny")           # seconds: random TNN + byte-level BPE
    with ServerProcess(model_dir, env={"TNN_API_KEY": "k"}) as server:
        httpx.get(server.url + "/health")                        # server.url = "http://127.0.0.1:<port>"

The model is a random TNN (d_model 32, 2 layers, train length 64, ETSC-converted); its text is gibberish, but it
exercises every code path. Special tokens follow the shipped tokenizer: id 0 `<|endoftext|>` (bos and eos),
id 1 `<pad>`, plus a chat template in tokenizer_config.json.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

# Mixed scripts so that byte-level BPE produces tokens that end inside a multi-byte UTF-8 character.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. ",
    "To be, or not to be, that is the question. ",
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune. ",
    "Café, naïve, façade, résumé, jalapeño, Straße, smörgåsbord. ",
    "日本語のテキスト、中文文本、한국어 텍스트. ",
    "Emoji: 🙂 🚀 🎉 ✨ 🐍 — and dashes – too. ",
    "0123456789 + - * / = ( ) [ ] { } < > ! ? ; : , . ",
    "User:\nHello there\n\nAssistant:\nHi! How can I help?\n\n",
]


def make_tiny_model_dir(
    path: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 384,
    converted: bool = True,
    chat_template: bool = True,
    tokenizer_dir: str | Path | None = None,
    **config_changes: Any,
) -> Path:
    """Write a tiny random TNN model directory (config, weights, ssm, tokenizer) to `path` and return it.
    `tokenizer_dir`: copy that directory's tokenizer (e.g. the shipped model's) instead of training one.
    `config_changes` override TnnConfig fields (e.g. operator="ski", causal=False: a bidirectional encoder,
    which is never converted)."""
    import torch

    from tnn.model import TnnConfig, TnnLM, attach_ssm, save_model
    from tnn.model.loading import copy_tokenizer
    from tnn.model.tokenizer import CHAT_TEMPLATE, load_tokenizer, save_tokenizer, train_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        tokenizer = train_tokenizer(CORPUS * 4, vocab_size=vocab_size)
        save_tokenizer(tokenizer, path, chat_template=CHAT_TEMPLATE if chat_template else None)
    else:
        copy_tokenizer(Path(tokenizer_dir), path)
        tokenizer = load_tokenizer(path)

    config = TnnConfig(
        vocab_size=tokenizer.get_vocab_size(),
        d_model=32,
        n_layers=2,
        expand_ratio=2.0,
        d_glu=32,
        d_rpe=16,
        n_rpe_layers=2,
        padding_idx=1,
        dropout=0.0,
        train_length=64,
    ).replace(**config_changes)
    torch.manual_seed(seed)
    model = TnnLM(config).eval()
    if converted and config.causal:
        attach_ssm(model)
    save_model(model, path)
    return path


def make_fairseq_checkpoint(path: str | Path, *, vocab_size: int, seed: int = 0) -> Path:
    """Write a tiny random TNN as an original fairseq-evo checkpoint (`tnn_v2_decay_99_pre` layout, d_model 32,
    2 layers, tokens_per_sample 64) with `vocab_size` embedding rows; returns the path. Every key is checked to map
    back to its native name, so the file is what tnn.model's fairseq loader reads."""
    import torch

    from tnn.model import TnnConfig, TnnLM
    from tnn.model.fairseq import fairseq_key, native_key

    config = TnnConfig(vocab_size=vocab_size, d_model=32, n_layers=2, expand_ratio=3.0, d_glu=32, d_rpe=16,
                       n_rpe_layers=1, padding_idx=1, dropout=0.0, train_length=64)  # fmt: skip
    torch.manual_seed(seed)
    state = {}
    for name, tensor in TnnLM(config).state_dict().items():
        key = fairseq_key(name)
        assert native_key(key) == name, (key, name)
        state[key] = tensor.reshape(config.n_heads, 1, -1) if name.endswith("tno.gamma") else tensor
    state["decoder.version"] = torch.tensor([3.0])
    model_args = {"arch": "tnn_v2_decay_99_pre", "decoder_embed_dim": 32, "decoder_layers": 2, "glu_dim": 32,
                  "rpe_embedding": 16, "rpe_layers": 1, "decoder_attention_heads": 1, "expand_ratio": 3}  # fmt: skip
    checkpoint = {"args": None, "cfg": {"model": model_args, "task": {"tokens_per_sample": 64}}, "model": state}
    path = Path(path)
    torch.save(checkpoint, path)
    return path


CHROMIUM = os.environ.get("TNN_CHROMIUM", "/usr/bin/chromium")


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium driven by playwright (never a downloaded browser); skips the calling test with a reason
    when either is absent."""
    import shutil

    import pytest

    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM}: `make browser-tools` (apt-get install chromium) or set TNN_CHROMIUM")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`tnn serve MODEL_DIR` as a real subprocess on 127.0.0.1; the context manager waits for /ready.

    On exit it sends SIGTERM and waits (the server drains), killing the process after `stop_timeout` seconds.
    `args` are extra command-line flags, `env` extra environment variables (e.g. TNN_API_KEY). TNN_THREADS
    defaults to 1: on a shared CI machine, several intra-op threads make small decode batches 50x slower.
    TNN_NATIVE_STEP defaults to off (no background compile per server; tests/server/test_native_step.py turns it on).
    The server's combined output goes to `log_path` (read it with `log()` when a test fails).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        args: list[str] | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 300.0,  # a loaded shared CPU can take minutes to import torch and warm up
        stop_timeout: float = 30.0,
        port: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.port = port or free_port()  # a given port: restart a server where its clients expect it
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(args or [])
        self.env = dict(env or {})
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="tnn-serve-", suffix=".log")[1])
        self.returncode: int | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tnn.cli.main",
            "serve",
            str(self.model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.args,
        ]

    def launch(self) -> ServerProcess:
        """Start the process without waiting for /ready (start several, then `wait_ready` each)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TNN_THREADS": "1", "TNN_NATIVE_STEP": "off", **self.env}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def start(self) -> ServerProcess:
        self.launch().wait_ready()
        return self

    def wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tnn serve exited with {self.process.returncode} before ready:\n{self.log()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"tnn serve not ready after {self.ready_timeout}s:\n{self.log()}")

    def terminate(self) -> None:
        """Send SIGTERM (start draining) without waiting."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        """SIGTERM, wait up to `stop_timeout` seconds, then SIGKILL. Returns the exit status."""
        if self.process is None:
            return None
        self.terminate()
        try:
            self.returncode = self.process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.returncode = self.process.wait(timeout=10)
        return self.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:]

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def scrape_metrics(
    url: str, *, headers: Mapping[str, str] | None = None
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET {url}/metrics parsed: (sample name, labels) -> value; read one with `metric_value`."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", headers=dict(headers or {}), timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric_value(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of the samples `name` whose labels include `labels` (0.0 if none), e.g.
    metric_value(s, "tnn_requests_total", finish_reason="length"): over every `model_name` (a server has one)."""
    wanted = set(labels.items())
    return sum(
        value for (sample, sample_labels), value in samples.items() if sample == name and wanted <= sample_labels
    )


class HeldStream:
    """A streaming completion held open in a thread until `close()`: it keeps a state slot (or a queue place) taken.

    `first` is set when its first body bytes arrive (a queued request sends none until it runs)."""

    def __init__(self, url: str, body: Mapping[str, object]) -> None:
        self.first = threading.Event()
        self._close = threading.Event()
        self.status: int | None = None
        self._thread = threading.Thread(target=self._run, args=(url, dict(body)), daemon=True)
        self._thread.start()

    def _run(self, url: str, body: dict[str, object]) -> None:
        with httpx.Client(timeout=60) as http:
            with http.stream("POST", url + "/v1/completions", json={**body, "stream": True}) as response:
                self.status = response.status_code
                for _ in response.iter_bytes():
                    self.first.set()
                    if self._close.is_set():
                        return

    def close(self) -> None:
        self._close.set()
        self._thread.join(timeout=30)
