"""The shipped default model: small enough, loads through the normal loader, converts, and is what it claims."""

from __future__ import annotations

import copy
import json
import math

import torch
from transformers import AutoTokenizer

import tnn.model
from tnn.model.tokenizer import encode, load_tokenizer

MAX_BYTES = 30 * 2**20


def test_default_model_directory_is_complete_and_under_30_mb() -> None:
    directory = tnn.model.default_model_dir()
    names = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training.json"} <= names
    assert "ssm.safetensors" not in names and "checkpoint.pt" not in names
    assert sum(p.stat().st_size for p in directory.iterdir()) < MAX_BYTES


def test_default_model_loads_converts_and_decodes_like_the_parallel_path() -> None:
    directory = tnn.model.default_model_dir()
    model = tnn.model.load(directory)
    assert not model.is_converted
    record = json.loads((directory / "training.json").read_text())
    assert record["arch"] == "tnn" and record["model_config"] == model.config.to_dict()
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
    assert (reduced - parallel).abs().max() / parallel.abs().max() <= 2e-2  # kernel tolerance 2e-2
    # trained, not random: a famous line costs far less than a uniform guess (ln V nats per token)
    loss = torch.nn.functional.cross_entropy(parallel[0, :-1], tokens[0, 1:])
    assert loss < 0.7 * math.log(model.config.vocab_size)
