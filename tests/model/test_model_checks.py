"""Load-time refusals of broken models, each naming the file, the field or the layer: strict config types and
bounds (before anything is allocated), non-finite weights, and tokenizer files that do not fit the model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import tnn.model
from tnn.model.config import SsmConfig, TnnConfig
from tnn.model.loading import SSM_FILE, WEIGHTS_FILE
from tnn.model.tokenizer import check_tokenizer_dir, save_tokenizer, train_tokenizer

from .helpers import tiny_model


@pytest.mark.parametrize(
    ("field", "value"),
    [("causal", "false"), ("bias", 1), ("final_norm", "true"), ("d_model", "512"), ("n_layers", True),
     ("vocab_size", 97.0), ("gamma", "0.99"), ("expand_ratio", True), ("rpe_act", 3), ("padding_idx", "1"),
     ("train_length", 64.5), ("dropout", None), ("decay", None)],
)  # fmt: skip
def test_config_types_are_strict(field: str, value: object) -> None:
    data = {**TnnConfig(vocab_size=97).to_dict(), field: value}
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        TnnConfig.from_dict(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [("d_model", 10**9), ("n_layers", 10**7), ("train_length", 10**9), ("vocab_size", 10**10), ("d_glu", 10**8),
     ("d_rpe", 10**8), ("n_rpe_layers", 10**5), ("n_heads", 10**6), ("expand_ratio", 1e6)],
)  # fmt: skip
def test_absurd_sizes_fail_fast_naming_the_field(tmp_path: Path, field: str, value: object) -> None:
    model_dir = tmp_path / "m"
    tiny_model().save(model_dir)
    data = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**data, field: value}))
    start = time.monotonic()
    with pytest.raises(ValueError, match=rf"config.json: {field} must be"):
        tnn.model.load(model_dir)
    assert time.monotonic() - start < 5  # nothing allocated, nothing computed


def test_ssm_config_is_strict_and_bounded() -> None:
    with pytest.raises(ValueError, match="ssm.length must be"):
        SsmConfig(method="etsc", length=10**9, modes=4)
    with pytest.raises(ValueError, match="ssm.full_state must be"):
        SsmConfig(method="etsc", length=16, modes=4, full_state="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ssm.modes must be"):
        SsmConfig(method="etsc", length=16, modes=10**6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path: Path, bad: float) -> None:
    model_dir = tmp_path / "m"
    tiny_model().save(model_dir)
    state = load_file(model_dir / WEIGHTS_FILE)
    key = "layers.1.glu.l1.weight"
    state[key][3, 4] = bad
    save_file(state, str(model_dir / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=rf"{WEIGHTS_FILE}: key '{key}' \(layer 1\) has 1 non-finite value"):
        tnn.model.load(model_dir)


def test_non_finite_ssm_tensors_are_refused_naming_the_layer(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    tnn.model.attach_ssm(tiny_model(), length=16).save(model_dir)
    state = load_file(model_dir / SSM_FILE)
    state["layers.0.poles.real"][0, 0] = float("nan")
    save_file(state, str(model_dir / SSM_FILE))
    with pytest.raises(ValueError, match=rf"{SSM_FILE}: key 'layers.0.poles.real' \(layer 0\) has 1 non-finite"):
        tnn.model.load(model_dir)


def test_tokenizer_checks_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good"
    save_tokenizer(train_tokenizer(["hello world, the quick brown fox"] * 4, vocab_size=300), good)
    check_tokenizer_dir(good, vocab_size=300)
    with pytest.raises(ValueError, match=r"tokenizer.json: the tokenizer has \d+ tokens but the model's embedding"):
        check_tokenizer_dir(good, vocab_size=100)

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "tokenizer.json").write_text("this is not a tokenizer")
    with pytest.raises(ValueError, match=r"garbage/tokenizer.json: not a readable tokenizer"):
        check_tokenizer_dir(garbage, vocab_size=300)

    bad_config = tmp_path / "bad-config"
    save_tokenizer(train_tokenizer(["hello"] * 4, vocab_size=300), bad_config)
    (bad_config / "tokenizer_config.json").write_text("{nope")
    with pytest.raises(ValueError, match=r"bad-config/tokenizer_config.json: not valid JSON"):
        check_tokenizer_dir(bad_config, vocab_size=300)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        check_tokenizer_dir(tmp_path / "none", vocab_size=300)
