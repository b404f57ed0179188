"""`tnn serve` refuses a broken model at load, naming the file, field or layer, instead of answering every request
with an error: NaN weights, a chat template that does not render, unreadable or oversized tokenizers, absurd or
mistyped config values. In-process through build_engine (what the server's loading runs), plus one real process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tnn.model.loading import WEIGHTS_FILE
from tnn.server.app import build_engine
from tnn.server.metrics import Metrics
from tnn.server.model_check import check_finite_logits
from tnn.server.settings import Settings

pytestmark = pytest.mark.timeout(300)


def nan_weight(model_dir: Path) -> str:
    state = load_file(model_dir / WEIGHTS_FILE)
    state["layers.1.gtu.v_proj.weight"][0, 0] = float("nan")
    save_file(state, str(model_dir / WEIGHTS_FILE))
    return rf"{WEIGHTS_FILE}: key 'layers.1.gtu.v_proj.weight' \(layer 1\) has 1 non-finite value"


def broken_template(model_dir: Path) -> str:
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "chat_template": "{% for m in messages %}{{ m.content | nofilter }}"}))
    return r"tokenizer_config.json: the chat_template does not render a sample conversation"


def raising_template(model_dir: Path) -> str:
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "chat_template": "{{ raise_exception('roles must alternate') }}"}))
    return r"tokenizer_config.json: the chat_template does not render .*roles must alternate"


def garbage_tokenizer(model_dir: Path) -> str:
    (model_dir / "tokenizer.json").write_bytes(b"\x89PNG not a tokenizer")
    return r"tokenizer.json: the tokenizer files do not load"


def oversized_tokenizer(model_dir: Path) -> str:
    from tokenizers import Tokenizer, models

    vocab = {"<|endoftext|>": 0, "<pad>": 1, **{f"w{i}": i for i in range(2, 500)}}  # the embedding has 384 rows
    Tokenizer(models.WordLevel(vocab, unk_token="<pad>")).save(str(model_dir / "tokenizer.json"))
    return r"tokenizer.json: the tokenizer has 500 tokens but the model's embedding only 384"


def mistyped_config(model_dir: Path) -> str:
    path = model_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "causal": "false"}))
    return r"config.json: causal must be a boolean"


def absurd_config(model_dir: Path) -> str:
    path = model_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "d_model": 10**9}))
    return r"config.json: d_model must be an integer in \[1, 65536\], got 1000000000"


def endless_template(model_dir: Path) -> str:
    """10^10 iterations (the sandbox caps one range at 10^5, not two nested ones): refused within the limit."""
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    path.write_text(json.dumps({**config, "chat_template": loop}))
    return r"tokenizer_config.json: the chat_template does not render .*TimeoutError: did not finish within 5 s"


def huge_template(model_dir: Path) -> str:
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "chat_template": "{% for i in range(100000) %}{{ 'x' * 20 }}{% endfor %}"}))
    return r"tokenizer_config.json: the chat_template does not render .*2,000,000 characters \(at most 1,000,000\)"


def non_utf8_config(model_dir: Path) -> str:
    path = model_dir / "config.json"
    path.write_bytes(path.read_bytes().replace(b'"causal"', b'"caus\xffal"'))
    return r"config.json is not valid UTF-8"


BREAKAGES: list[Callable[[Path], str]] = [nan_weight, broken_template, raising_template, garbage_tokenizer,
                                          oversized_tokenizer, mistyped_config, absurd_config, endless_template,
                                          huge_template, non_utf8_config]  # fmt: skip


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__)
def test_broken_models_are_refused_at_load(tmp_path: Path, tiny_model_dir: Path, breakage: Callable) -> None:
    model_dir = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, model_dir)
    expected = breakage(model_dir)
    with pytest.raises((ValueError, FileNotFoundError), match=expected):
        build_engine(Settings(model_dir=model_dir, threads=1), Metrics())


def test_non_finite_logits_name_the_first_bad_layer(tiny_model_dir: Path) -> None:
    """Finite weights can still overflow: the probe's prefill finds it and names where it starts."""
    import tnn.model

    model = tnn.model.load(tiny_model_dir)
    with torch.no_grad():
        model.layers[1].glu.l1.weight.mul_(1e20)  # finite weights; the gate product overflows float32
        model.layers[1].glu.l2.weight.mul_(1e20)
    with pytest.raises(ValueError, match=r"the prefill of a 3-token probe gives non-finite logits; layer 1 is the"):
        check_finite_logits(model, [0, 5, 7], tiny_model_dir)


def test_tnn_serve_exits_with_the_reason_and_no_traceback(tmp_path: Path, tiny_model_dir: Path) -> None:
    model_dir = tmp_path / "nan"
    shutil.copytree(tiny_model_dir, model_dir)
    nan_weight(model_dir)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tnn.cli.main", "serve", str(model_dir), "--port", "0"],
                            capture_output=True, text=True, timeout=240)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "cannot serve" in result.stderr and "layers.1.gtu.v_proj.weight" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - start < 240
