"""`tnn train` on a tiny model: a loadable model directory, a training record, exact resumption, the baseline."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, GPT2LMHeadModel

from tnn.model.loading import load
from tnn.training.corpus import Splits
from tnn.training.train import TrainConfig, build_model, count_parameters, learning_rate, steps_that_fit, train

SPLITS = Splits(
    train="MACBETH:\nSo foul and fair a day I have not seen.\n\nBANQUO:\nHow far is't call'd to Forres?\n\n" * 30,
    validation="MIRANDA:\nIf by your art, my dearest father, you have\nPut the wild waters in this roar, allay them.\n",
    test="First Witch:\nWhen shall we three meet again\nIn thunder, lightning, or in rain?\n",
)
TINY = TrainConfig(
    vocab_size=300,
    d_model=32,
    n_layers=2,
    dropout=0.0,
    seq_len=16,
    batch_size=2,
    max_steps=2,
    warmup_steps=10,  # every step is in warmup: lr does not depend on max_steps, so resuming is exact
    eval_every=1,
    checkpoint_every=1,
)


def run(config: TrainConfig, out: Path, **kwargs: object) -> dict:
    return train(config, out, splits=SPLITS, progress=False, **kwargs)


def test_two_steps_write_a_loadable_model_directory_and_record(tmp_path: Path) -> None:
    record = run(TINY, tmp_path)
    model = load(tmp_path)
    assert model.config.train_length == 16 and model.config.vocab_size == 300
    assert model.config.decay == "fixed" and model.config.gamma == 0.99 and model.config.norm_position == "pre"
    assert AutoTokenizer.from_pretrained(tmp_path).eos_token_id == 0
    saved = json.loads((tmp_path / "training.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["steps"] == 2 and saved["tokens_seen"] == 2 * 2 * 16
    assert saved["parameters"] == count_parameters(model)
    assert [h["step"] for h in saved["history"]] == [1, 2]
    for split in ("validation", "test"):
        assert saved[split]["bytes"] == len(getattr(SPLITS, split).encode())
        assert 0 < saved[split]["bits_per_byte"] < 20
    assert not (tmp_path / "ssm.safetensors").exists()


def test_resuming_from_the_checkpoint_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    three = dataclasses.replace(TINY, max_steps=3)
    run(three, tmp_path / "straight")
    run(TINY, tmp_path / "resumed")
    record = run(three, tmp_path / "resumed", resume=True, tokenizer_dir=tmp_path / "resumed")
    assert record["steps"] == 3 and record["tokens_seen"] == 3 * 32
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, msg=key)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path: Path) -> None:
    run(TINY, tmp_path)
    with pytest.raises(ValueError, match="different training config"):
        run(dataclasses.replace(TINY, d_model=64), tmp_path, resume=True, tokenizer_dir=tmp_path)


def test_gpt2_baseline_matches_the_tnn_parameter_count_and_trains(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, arch="gpt2", d_model=64)
    tnn = count_parameters(build_model(dataclasses.replace(config, arch="tnn"), eos=0, pad=1))
    gpt2 = count_parameters(build_model(config, eos=0, pad=1))
    assert abs(gpt2 - tnn) / tnn < 0.01
    record = run(config, tmp_path)
    assert record["parameters"] == gpt2
    assert isinstance(GPT2LMHeadModel.from_pretrained(tmp_path), GPT2LMHeadModel)


def test_learning_rate_warms_up_then_decays_to_min_lr() -> None:
    config = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert learning_rate(0, config) == pytest.approx(1e-4)
    assert learning_rate(9, config) == pytest.approx(1e-3)
    assert learning_rate(60, config) == pytest.approx(5.5e-4)
    assert learning_rate(110, config) == pytest.approx(1e-4)


def test_a_time_budget_compresses_warmup_and_cosine_onto_the_steps_that_fit() -> None:
    config = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, max_steps=2000)
    horizon = steps_that_fit(5, 2000, remaining_s=39.0, seconds_per_step=0.2)
    assert horizon == 5 + 195
    assert learning_rate(9, config, horizon) == pytest.approx(1e-3)  # warmup: 100 * 200 / 2000 = 10 steps
    assert learning_rate(105, config, horizon) == pytest.approx(5.5e-4)  # half way through the cosine
    assert learning_rate(200, config, horizon) == pytest.approx(1e-4)  # min_lr when the budget runs out
    assert learning_rate(1000, config, 5000) == learning_rate(1000, config)  # more time than steps: unchanged
    assert steps_that_fit(7, 2000, remaining_s=-1.0, seconds_per_step=0.2) == 8
    assert steps_that_fit(7, 50, remaining_s=1e6, seconds_per_step=0.2) == 50


def test_budgeted_run_records_its_schedule_and_writes_files_others_can_read(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)  # a private umask must not leak into the model files
    try:
        record = run(dataclasses.replace(TINY, max_steps=6, minutes=60.0), tmp_path / "out")
    finally:
        os.umask(old_umask)
    assert record["schedule_steps"] == 6  # an hour fits all six steps
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "training.json"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes
