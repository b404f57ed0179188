"""The shipped default model: small enough, loads through the normal loader already converted (no fit at start-up),
its recurrent form picks the parallel model's tokens on held-out text, and it is what it claims."""

from __future__ import annotations

import copy
import json
import math

import torch
from transformers import AutoTokenizer

import tnn.model
from tnn.convert.fidelity import measure_fidelity, text_tokens
from tnn.model import TnnConfig
from tnn.model.conversion import ReducedOptions
from tnn.model.loading import HELD_OUT_FILE
from tnn.model.tokenizer import encode, load_tokenizer

MAX_BYTES = 30 * 2**20
SHIPPED_FILES = {"config.json", "model.safetensors", "ssm.safetensors", "conversion.json", HELD_OUT_FILE}
FIDELITY_TOKENS = 384  # a short held-out text: seconds (the full report is in conversion.json, docs/fidelity.md)


def test_default_model_directory_is_complete_converted_and_under_30_mb() -> None:
    directory = tnn.model.default_model_dir()
    names = {p.name for p in directory.iterdir()}
    assert SHIPPED_FILES | {"tokenizer.json", "tokenizer_config.json", "training.json"} <= names
    assert "checkpoint.pt" not in names
    assert sum(p.stat().st_size for p in directory.iterdir()) < MAX_BYTES
    report = json.loads((directory / "conversion.json").read_text())
    defaults = ReducedOptions()
    assert report["method"] == "reduced" and report["reduced"]["tolerance"] == defaults.tolerance
    assert report["reduced"]["max_order"] == defaults.max_order and report["fidelity"]["tokens"] >= 1000


def test_the_shipped_conversion_picks_the_parallel_models_tokens_on_held_out_text() -> None:
    """Teacher-forced on the shipped held-out slice of Macbeth, float64: top-1 >= 99.5%, max |log-prob diff|
    <= 0.1, |bits/byte diff| <= 0.0005 (the issue's targets), in at most 1/10 of etsc-tail's state."""
    directory = tnn.model.default_model_dir()
    converted = tnn.model.load(directory, dtype=torch.float64)
    assert converted.is_converted and converted.config.ssm is not None and converted.config.ssm.method == "reduced"
    assert all(bool((layer.gtu.tno.ssm.poles.abs() < 1).all()) for layer in converted.layers)
    exact = tnn.model.attach_ssm(copy.deepcopy(converted), method="etsc-tail")
    assert converted.state_bytes_per_sequence() <= exact.state_bytes_per_sequence() / 10
    text = (directory / HELD_OUT_FILE).read_text(encoding="utf-8")
    tokens, n_bytes = text_tokens(directory, text, max_tokens=FIDELITY_TOKENS)
    fidelity = measure_fidelity(converted, converted, tokens, n_bytes, source=HELD_OUT_FILE)  # forward: parallel
    assert fidelity.tokens == FIDELITY_TOKENS and fidelity.top1_agreement >= 0.995
    assert fidelity.max_abs_logprob_diff <= 0.1 and abs(fidelity.bits_per_byte_diff) <= 5e-4


def test_default_model_converts_afresh_and_decodes_like_the_parallel_path() -> None:
    directory = tnn.model.default_model_dir()
    model = tnn.model.load(directory)
    model.config = model.config.replace(ssm=None)  # as trained: convert it again below
    for layer in model.layers:
        layer.gtu.tno.ssm = None
    record = json.loads((directory / "training.json").read_text())
    assert record["arch"] == "tnn" and TnnConfig.from_dict(record["model_config"]) == model.config
    assert record["test"]["bits_per_byte"] <= 2.4
    tokenizer = load_tokenizer(directory)
    assert AutoTokenizer.from_pretrained(directory).eos_token_id == 0
    prompt = "MACBETH:\nIs this a dagger which I see before me,\nThe handle toward my hand?"
    tokens = torch.tensor([[0, *encode(tokenizer, prompt)]])  # (1, L)
    parallel = model(tokens)  # (1, L, V)
    exact = tnn.model.attach_ssm(copy.deepcopy(model), method="etsc-tail")
    assert exact.config.ssm is not None and exact.config.ssm.length == model.config.train_length
    recurrent, _ = exact.recurrent_logits(tokens)
    torch.testing.assert_close(recurrent, parallel, rtol=1e-4, atol=1e-3)  # float32 FFTs of different length
    tnn.model.attach_ssm(model)  # the default, reduced: at most 1/10 of the exact state, every pole inside
    assert model.config.ssm is not None and model.config.ssm.method == "reduced"
    assert model.state_bytes_per_sequence() <= exact.state_bytes_per_sequence() / 10
    assert all(bool((layer.gtu.tno.ssm.poles.abs() < 1).all()) for layer in model.layers)
    reduced, _ = model.recurrent_logits(tokens)
    assert (reduced - parallel).abs().max() / parallel.abs().max() <= 1e-2  # kernel tolerance 1e-3, a few over it
    # trained, not random: a famous line costs far less than a uniform guess (ln V nats per token)
    loss = torch.nn.functional.cross_entropy(parallel[0, :-1], tokens[0, 1:])
    assert loss < 0.7 * math.log(model.config.vocab_size)
