"""The original fairseq-evo implementation's outputs (../shared/golden, float64) reproduced by ours."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import tnn.model
from tnn.model.fairseq import native_key
from tnn.model.tnn import Tno

from .helpers import relative_error, tiny_config

LM = "lm_decay99_pre_tiny"
FLOAT64_TOLERANCE = 1e-9  # golden/README: expect ~1e-15
FLOAT32_TOLERANCE = 1e-4  # golden/README: the original itself lands at 1.7e-7 in float32


@pytest.fixture(scope="module")
def lm_case(golden):
    folder = golden / LM
    tokens = load_file(folder / "inputs.safetensors")["tokens"]
    return folder, tokens, load_file(folder / "expected.safetensors")


def test_lm_float64_reproduces_every_stored_tensor(lm_case):
    folder, tokens, expected = lm_case
    model = tnn.model.load(folder / "checkpoint.pt", dtype=torch.float64)
    hidden = model.hidden_states(tokens)
    errors = {"embed": relative_error(hidden[0], expected["embed"])}
    for i in range(model.config.n_layers):
        errors[f"hidden.{i}"] = relative_error(hidden[i + 1], expected[f"hidden.{i}"])
        kernel, _ = model.layers[i].gtu.tno.coefficients(tokens.shape[1], torch.float64)
        errors[f"kernel.{i}"] = relative_error(kernel, expected[f"kernel.{i}"][0, : tokens.shape[1]])
    errors["features"] = relative_error(model.final_norm(hidden[-1]), expected["features"])
    errors["logits"] = relative_error(model(tokens), expected["logits"])
    assert max(errors.values()) <= FLOAT64_TOLERANCE, errors


def test_lm_float32_within_float32_tolerance(lm_case):
    folder, tokens, expected = lm_case
    model = tnn.model.load(folder / "checkpoint.pt")
    logits = model(tokens)
    assert logits.dtype == torch.float32
    assert relative_error(logits, expected["logits"]) <= FLOAT32_TOLERANCE


def test_lm_hyperparameters_come_from_cfg_and_shapes(lm_case):
    config = tnn.model.load(lm_case[0] / "checkpoint.pt").config
    assert (config.vocab_size, config.d_model, config.n_layers, config.d_inner) == (101, 32, 2, 96)
    assert (config.d_rpe, config.n_rpe_layers, config.d_glu, config.decay) == (16, 2, 32, "fixed")
    assert config.final_norm and config.norm_position == "pre" and config.padding_idx == 1


def _golden_tno(folder, causal: bool) -> Tno:
    """Build our Tno (h=2, e=8 -> D=16) and load the original module's weights by key name."""
    config = tiny_config(d_model=16, expand_ratio=1.0, n_heads=2, d_rpe=16, n_rpe_layers=3, gamma=0.9, causal=causal)
    tno = Tno(config).double()
    original = load_file(folder / "module.safetensors")
    state = {}
    for key, tensor in original.items():
        name = native_key("decoder.layers.0.self_attn.gtu.toep." + key)
        assert name is not None, key
        state[name.removeprefix("layers.0.gtu.tno.")] = tensor.reshape(-1) if key == "gamma" else tensor
    tno.load_state_dict(state, strict=True)
    return tno


@pytest.mark.parametrize(("case", "causal"), [("tno_causal_h2", True), ("tno_bidirectional_h2", False)])
def test_tno_module_cases(golden, case, causal):
    folder = golden / case
    x = load_file(folder / "inputs.safetensors")["x"]  # (B, h, n, e)
    expected = load_file(folder / "expected.safetensors")
    batch, heads, length, head_dim = x.shape
    tno = _golden_tno(folder, causal)

    # heads are channel-major ("(h e)"): (B, h, n, e) -> (B, n, h*e)
    def to_ours(t):
        return t.permute(0, 2, 1, 3).reshape(batch, length, heads * head_dim)

    y = tno(to_ours(x))
    assert relative_error(y, to_ours(expected["y"])) <= FLOAT64_TOLERANCE

    coef_pos, coef_neg = tno.coefficients(length, torch.float64)
    kernel = expected["kernel"].permute(1, 0, 2).reshape(-1, heads * head_dim)  # (n+1 or 2n, D)
    assert relative_error(coef_pos, kernel[:length]) <= FLOAT64_TOLERANCE
    if not causal:
        # layout [a_0 .. a_{n-1}, a_0 (unused), a_{-(n-1)} .. a_{-1}]; ours lists lags -1..-(n-1)
        assert relative_error(coef_neg, kernel[length + 1 :].flip(0)) <= FLOAT64_TOLERANCE

    y32 = tno.float()(to_ours(x).float())
    assert relative_error(y32, to_ours(expected["y"])) <= 1e-5  # case.json float32 advice
