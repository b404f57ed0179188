"""Recurrent decoding (prefill + step) against the parallel forward, the oracle chain's model-level link."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.model.decoding import random_tokens
from tests.model.helpers import relative_error, tiny_model
from tnn.convert.verify import teacher_forced
from tnn.model import TnnLM, TnnState, attach_ssm, load
from tnn.model.config import ETSC_METHODS, SsmMethod
from tnn.model.ssm import ssm_scan, step_weights, zero_state

METHODS = ETSC_METHODS
L = 37  # <= n = 64 (the tiny models' train_length): the exactness domain


@pytest.fixture(scope="module", params=["etsc-tail", "reduced"])
def model64(request: pytest.FixtureRequest) -> TnnLM:
    """A tiny float64 model converted by an exact method and by the reduced fit: the state layout, in-place step
    and prefill properties hold for both."""
    return attach_ssm(tiny_model(seed=0), method=request.param)


def stepped_logits(model: TnnLM, tokens: torch.Tensor) -> torch.Tensor:
    """Every token stepped from the zero state (`ssm_step` per layer, no prefill, no FFT): (B, L, V)."""
    state = model.empty_state(tokens.shape[0])
    return torch.stack([model.step(tokens[:, i], state)[0] for i in range(tokens.shape[1])], dim=1)


def oracle(model: TnnLM, tokens: torch.Tensor) -> torch.Tensor:
    """What the recurrent path must reproduce, computed without it: the parallel forward for exact methods (to
    lag n-1); for the reduced method, whose kernel only approximates the TNN's, the step alone from a zero state
    (the step equals `ssm_scan` and the realised kernel's impulse response: tests/model/test_reduced.py)."""
    assert model.config.ssm is not None
    if model.config.ssm.method == "reduced":
        return stepped_logits(model, tokens)
    return model(tokens)


@pytest.mark.parametrize("split", [1, 13, L - 1])
@pytest.mark.parametrize("method", METHODS)
def test_prefill_and_step_equal_forward_float64(method: SsmMethod, split: int) -> None:
    model = attach_ssm(tiny_model(seed=0), method=method)
    tokens = random_tokens(2, L)
    expected = model(tokens)  # (2, L, V) parallel FFT path, TNN kernel
    got, _ = teacher_forced(model, tokens, split)
    torch.testing.assert_close(got, expected[:, split - 1 :])
    assert relative_error(got, expected[:, split - 1 :]) <= 1e-9


def test_recurrent_logits_equal_forward_up_to_n(model64: TnnLM) -> None:
    tokens = random_tokens(2, 64)
    expected = oracle(model64, tokens)
    got, _ = model64.recurrent_logits(tokens)
    chunked, _ = model64.recurrent_logits(tokens, chunk_size=10)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(chunked, expected)


@pytest.mark.parametrize("split", [1, L - 1])
def test_float32_state_close_to_float64(model64: TnnLM, split: int) -> None:
    assert model64.config.ssm is not None
    single = attach_ssm(copy.deepcopy(model64).float(), method=model64.config.ssm.method)
    tokens = random_tokens(2, L)
    got, state = teacher_forced(single, tokens, split)
    assert state.layers[0].dtype == torch.float32 and got.dtype == torch.float32
    assert relative_error(got, oracle(model64, tokens)[:, split - 1 :]) <= 1e-4


@pytest.mark.parametrize(
    ("dtype", "state_dtype"),
    [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.bfloat16, torch.float32)],
)
def test_state_dtype_follows_the_model(dtype: torch.dtype, state_dtype: torch.dtype) -> None:
    model = attach_ssm(tiny_model(seed=1, dtype=dtype))
    logits, state = model.prefill(random_tokens(1, 5))
    assert all(layer.dtype == state_dtype for layer in state.layers)
    logits, state = model.step(torch.tensor([3]), state)
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    assert all(layer.dtype == state_dtype for layer in state.layers)
    ssm = model.config.ssm
    assert ssm is not None
    item = torch.empty((), dtype=state_dtype).element_size()
    rows = sum(2 * modes + ssm.fir_length for modes in ssm.layer_modes(model.config.n_layers))
    assert model.state_bytes_per_sequence() == rows * model.config.d_inner * item == state.nbytes


def test_batch_of_different_prompt_lengths_stepped_together(model64: TnnLM) -> None:
    """Prefill each prompt on its own, concatenate the states, then step the batch with teacher forcing."""
    lengths = [5, 12, 20]
    total = 30
    sequences = random_tokens(3, total, seed=7)
    states, firsts = [], []
    for row, length in enumerate(lengths):
        logits, state = model64.prefill(sequences[row : row + 1, :length])
        states.append(state)
        firsts.append(logits)
    state = TnnState.cat(states)
    assert state.batch_size == 3
    stepped = [[f[0]] for f in firsts]
    for offset in range(total - max(lengths)):
        tokens = torch.stack([sequences[row, length + offset] for row, length in enumerate(lengths)])  # (3,)
        logits, state = model64.step(tokens, state)
        for row in range(3):
            stepped[row].append(logits[row])
    for row, length in enumerate(lengths):
        end = length + total - max(lengths)
        expected = oracle(model64, sequences[row : row + 1, :end])[0, length - 1 :]  # (steps + 1, V)
        torch.testing.assert_close(torch.stack(stepped[row]), expected)


def test_gather_and_scatter_rows(model64: TnnLM) -> None:
    tokens = random_tokens(3, 9, seed=8)
    _, state = model64.prefill(tokens)
    next_tokens = torch.tensor([4, 5, 6])
    picked = state.gather([2, 0])  # a copy: stepping `state` in place below leaves it alone
    slots = model64.empty_state(4)
    slots.scatter_([3, 1], picked)
    expected, _ = model64.step(next_tokens, state)
    got, _ = model64.step(next_tokens[[2, 0]], picked)
    torch.testing.assert_close(got, expected[[2, 0]])
    got, _ = model64.step(torch.tensor([0, 4, 0, 6]), slots)  # slot 3 holds row 2, slot 1 row 0
    torch.testing.assert_close(got[[3, 1]], expected[[2, 0]])
    repeated = state.gather([1]).repeat(2)
    assert repeated.batch_size == 2
    torch.testing.assert_close(repeated.layers[0][0], repeated.layers[0][1])


def test_step_updates_the_state_in_place(model64: TnnLM) -> None:
    """The returned state is the same object over the same storage; the old values are gone."""
    _, state = model64.prefill(random_tokens(2, 9, seed=11))
    before = state.clone()
    pointers = [layer.data_ptr() for layer in state.layers]
    _, after = model64.step(torch.tensor([3, 4]), state)
    assert after is state and [layer.data_ptr() for layer in after.layers] == pointers
    assert all(not torch.equal(a, b) for a, b in zip(after.layers, before.layers, strict=True))
    model64.step(torch.tensor([3, 4]), before)
    expected, _ = model64.step(torch.tensor([5, 6]), before)
    got, _ = model64.step(torch.tensor([5, 6]), state)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_stepping_a_row_range_of_a_pool(model64: TnnLM) -> None:
    """The engine's pattern: a preallocated pool, rows copied into slots, the running prefix stepped in place."""
    prompts = random_tokens(3, 12, seed=12)
    _, prefilled = model64.prefill(prompts)
    pool = model64.empty_state(8)
    pool.copy_rows_(0, prefilled.rows(0, 2))
    pool.copy_rows_(2, prefilled.gather([2]))
    sentinel = pool.rows(3, 8).clone()
    tokens = torch.tensor([7, 8, 9])
    expected, _ = model64.step(tokens, prefilled.clone())
    running = pool.rows(0, 3)
    got, same = model64.step(tokens, running)
    assert same is running
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for a, b in zip(pool.rows(0, 3).layers, prefilled.layers, strict=True):
        assert not torch.equal(a, b)  # the pool itself moved on
    for a, b in zip(pool.rows(3, 8).layers, sentinel.layers, strict=True):
        assert torch.equal(a, b)  # rows past the running prefix untouched
    pool.zero_rows_(0, 3)
    assert all(not layer[:3].any() for layer in pool.layers)
    with pytest.raises(ValueError, match="out of range"):
        pool.rows(4, 9)


@pytest.mark.parametrize("method", METHODS)
def test_halved_state_equals_full_state(method: SsmMethod) -> None:
    half = attach_ssm(tiny_model(seed=2), method=method)
    full = attach_ssm(tiny_model(seed=2), method=method, full_state=True)
    assert half.config.ssm is not None and full.config.ssm is not None
    assert half.config.ssm.modes < full.config.ssm.modes
    tokens = random_tokens(2, 100)  # past n as well: the two are the same model at every position
    got, _ = teacher_forced(half, tokens, 50)
    expected, _ = teacher_forced(full, tokens, 50)
    assert relative_error(got, expected) <= 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_prefill_state_equals_stepping_token_by_token(method: SsmMethod) -> None:
    model = attach_ssm(tiny_model(seed=3), method=method)
    tokens = random_tokens(2, 100)  # longer than n = 64: the folded FFT covers two periods
    _, prefilled = model.prefill(tokens)
    state = model.empty_state(2)
    for i in range(tokens.shape[1]):
        _, state = model.step(tokens[:, i], state)
    for got, expected in zip(prefilled.layers, state.layers, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10 * expected.abs().max().item())


def test_layer_prefill_state_equals_ssm_scan(model64: TnnLM) -> None:
    tno = model64.layers[0].gtu.tno
    assert tno.ssm is not None
    v = torch.randn(2, 50, model64.config.d_inner, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    out, state = tno.prefill(v, None)
    expected_out, expected_state = ssm_scan(v, zero_state(2, tno.ssm), step_weights(tno.ssm))
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(state, expected_state)


def test_chunked_prefill_equals_one_shot(model64: TnnLM) -> None:
    tokens = random_tokens(2, 150)
    logits, state = model64.prefill(tokens)
    chunked_logits, chunked_state = model64.prefill(tokens, chunk_size=16)
    torch.testing.assert_close(chunked_logits, logits)
    for got, expected in zip(chunked_state.layers, state.layers, strict=True):
        torch.testing.assert_close(got, expected)
    continued_logits, continued = model64.prefill(tokens[:, 100:], model64.prefill(tokens[:, :100])[1])
    torch.testing.assert_close(continued_logits, logits)


def test_past_n_default_method_beats_the_published_one() -> None:
    """Past the conversion length ETSC is not the TNN; the default must be closer to it than 'etsc' and
    'etsc-inclusive' (a regression test of the measured ranking, on a tiny random model with n = 32)."""
    base = tiny_model(seed=4)
    tokens = random_tokens(1, 128, seed=5)
    expected = base(tokens)
    errors = {}
    for method in METHODS:
        got, _ = attach_ssm(copy.deepcopy(base), length=32, method=method).recurrent_logits(tokens)
        assert relative_error(got[:, :32], expected[:, :32]) <= 1e-9
        errors[method] = relative_error(got, expected)
    assert errors["etsc-tail"] < errors["etsc-inclusive"] < errors["etsc"]


@pytest.mark.parametrize("method", METHODS)
def test_golden_fairseq_lm_converted_at_16(golden: Path, method: SsmMethod) -> None:
    folder = golden / "lm_decay99_pre_tiny"
    model = attach_ssm(load(folder / "checkpoint.pt", dtype=torch.float64), length=16, method=method)
    tokens = load_file(folder / "inputs.safetensors")["tokens"][:, :16]  # (2, 16): positions < n
    expected = load_file(folder / "expected.safetensors")["logits"][:, :16]  # (2, 16, 101) original code, float64
    for split in (1, 8, 15):
        got, _ = teacher_forced(model, tokens, split)
        assert relative_error(got, expected[:, split - 1 :]) <= 1e-9
    single = attach_ssm(load(folder / "checkpoint.pt", dtype=torch.float32), length=16, method=method)
    got, _ = teacher_forced(single, tokens, 8)
    assert relative_error(got, expected[:, 7:]) <= 1e-4


def test_prefill_and_step_refuse_an_unconverted_model() -> None:
    model = tiny_model(seed=0)
    with pytest.raises(RuntimeError, match="convert"):
        model.prefill(random_tokens(1, 3))


def test_a_broken_row_does_not_touch_the_others(model64: TnnLM) -> None:
    """Rows of a batch never mix: a NaN state in one sequence leaves its neighbours' logits exact."""
    _, state = model64.prefill(random_tokens(3, 9, seed=10))
    broken = state.clone()
    expected, _ = model64.step(torch.tensor([1, 2, 3]), state)
    broken.layers[0][1] = float("nan")
    got, after = model64.step(torch.tensor([1, 2, 3]), broken)
    assert torch.isnan(got[1]).all() and torch.isnan(after.layers[0][1]).any()  # the FIR history gets the new input
    torch.testing.assert_close(got[[0, 2]], expected[[0, 2]])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_conversion_and_decoding_match_cpu(model64: TnnLM) -> None:
    gpu = attach_ssm(copy.deepcopy(model64).cuda())  # conversion maths runs on the CPU, params move to the GPU
    tokens = random_tokens(2, L)
    expected, _ = teacher_forced(model64, tokens, 13)
    got, state = teacher_forced(gpu, tokens.cuda(), 13)
    assert state.layers[0].device.type == "cuda"
    assert relative_error(got.cpu(), expected) <= 1e-9
