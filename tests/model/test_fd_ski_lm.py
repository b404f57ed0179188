"""FD-TNN and SKI-TNN language models: same blocks, same directory, same conversion and decoding as the TNN."""

from __future__ import annotations

import pytest
import torch

import tnn.model
from tnn.convert.verify import teacher_forced
from tnn.model import TnnConfig, attach_ssm
from tnn.model.fd_tno import FdTno
from tnn.model.ski_tno import SkiTno

from .decoding import random_tokens
from .helpers import relative_error, tiny_model

VARIANTS = {"fd": {"operator": "fd", "decay": "none"}, "ski": {"operator": "ski", "ski_rank": 8, "ski_taps": 5}}
N = 64  # the tiny models' train_length: conversion length and the frozen FD grid / SKI spacing


@pytest.mark.parametrize("operator", sorted(VARIANTS))
@pytest.mark.parametrize("split", [1, 20, N])
def test_prefill_and_step_equal_parallel_up_to_n(operator: str, split: int) -> None:
    model = attach_ssm(tiny_model(seed=1, **VARIANTS[operator]), method="etsc-tail")  # exact to lag n-1
    tokens = random_tokens(2, N)
    expected = model(tokens)  # parallel path, the operator's own kernel
    got, _ = teacher_forced(model, tokens, split)
    assert relative_error(got, expected[:, split - 1 :]) <= 1e-9


@pytest.mark.parametrize("operator", sorted(VARIANTS))
def test_float32_decoding_close_to_parallel(operator: str) -> None:
    model = attach_ssm(tiny_model(seed=2, dtype=torch.float32, **VARIANTS[operator]), method="etsc-tail")
    tokens = random_tokens(2, N)
    got, _ = teacher_forced(model, tokens, 10)
    assert relative_error(got, model(tokens)[:, 9:]) <= 1e-4


@pytest.mark.parametrize("operator", sorted(VARIANTS))
def test_mixer_class_and_directory_round_trip(operator: str, tmp_path) -> None:
    model = attach_ssm(tiny_model(seed=3, **VARIANTS[operator]), method="etsc-tail")
    assert isinstance(model.layers[0].gtu.tno, {"fd": FdTno, "ski": SkiTno}[operator])
    model.save(tmp_path)
    loaded = tnn.model.load(tmp_path, dtype=torch.float64)
    assert loaded.config.operator == operator and loaded.is_converted
    tokens = random_tokens(1, 30)
    # round-off only: the FFTs' last bits may depend on where the loaded tensors sit in memory (SIMD alignment)
    assert relative_error(loaded(tokens), model(tokens)) <= 1e-14
    assert relative_error(loaded.prefill(tokens)[0], model.prefill(tokens)[0]) <= 1e-14


@pytest.mark.parametrize("operator", sorted(VARIANTS))
def test_bidirectional_variant_refuses_conversion(operator: str) -> None:
    model = tiny_model(seed=4, causal=False, **VARIANTS[operator])
    with pytest.raises(ValueError, match="bidirectional"):
        attach_ssm(model, method="etsc-tail")
    tokens = random_tokens(3, 21)
    pooled = model.pooled_features(tokens)
    assert pooled.shape == (3, 32) and torch.isfinite(pooled).all()


def test_pooling_of_a_causal_model() -> None:
    """last = the features at the final position; mean = their average (a causal prefix sees no future)."""
    model = tiny_model(seed=5)
    tokens = random_tokens(1, 12)
    features = model.final_norm(model.hidden_states(tokens)[-1])  # (1, 12, d)
    assert relative_error(model.pooled_features(tokens[:, :7], "last"), features[:, 6]) <= 1e-12
    assert relative_error(model.pooled_features(tokens[:, :7], "mean"), features[:, :7].mean(1)) <= 1e-12


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"operator": "fd"}, "decay must be 'none'"),
        ({"operator": "ski", "decay": "none"}, "decay must be 'fixed'"),
        ({"operator": "ski", "ski_taps": 4}, "odd"),
        ({"operator": "ski", "ski_rank": 1}, "ski_rank"),
        ({"operator": "fd", "decay": "none", "normalize": True}, "normalize"),
        ({"operator": "conv"}, "operator must be one of"),
    ],
)
def test_config_refuses_inconsistent_operators(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        TnnConfig(vocab_size=10, **changes)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_right_padded_causal_pooling_equals_each_sequence_alone(pooling) -> None:
    model = tiny_model(seed=6, **VARIANTS["fd"])
    first, second = random_tokens(1, 9, seed=1), random_tokens(1, 4, seed=2)
    padded = torch.cat([first, torch.cat([second, torch.ones(1, 5, dtype=torch.long)], dim=1)])  # (2, 9)
    pooled = model.pooled_features(padded, pooling, torch.tensor([9, 4]))
    assert relative_error(pooled[0], model.pooled_features(first, pooling)[0]) <= 1e-12
    assert relative_error(pooled[1], model.pooled_features(second, pooling)[0]) <= 1e-12


def test_bidirectional_pooling_refuses_padding() -> None:
    model = tiny_model(seed=6, causal=False, **VARIANTS["ski"])
    with pytest.raises(ValueError, match="one length"):
        model.pooled_features(random_tokens(2, 5), "mean", torch.tensor([5, 3]))


@pytest.mark.parametrize("operator", sorted(VARIANTS))
@pytest.mark.parametrize("method", ["etsc", "etsc-inclusive", "etsc-tail"])
def test_every_pole_lies_inside_the_unit_circle(operator: str, method: str) -> None:
    """FD-TNN has no decay and SKI-TNN only a warp; conversion still writes no pole with |lambda| >= 1."""
    model = attach_ssm(tiny_model(seed=9, **VARIANTS[operator]), method=method)
    for layer in model.layers:
        assert layer.gtu.tno.ssm.poles.abs().max() < 1.0
