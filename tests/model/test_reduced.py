"""The reduced-order recurrence: the fit over random kernels, its prefill against the step loop, the fused step
against the eager one, the TNN link (golden fairseq case and a random model), and the stability guarantees."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.model.decoding import random_tokens
from tests.model.helpers import relative_error, tiny_model
from tnn.convert.verify import teacher_forced
from tnn.model import TnnLM, attach_ssm, load, save_model
from tnn.model import tnn as tnn_module
from tnn.model.conversion import ReducedOptions
from tnn.model.ssm import (
    ModalParams,
    SsmParams,
    UnstablePole,
    etsc,
    fused_step_compiled,
    modal_kernel,
    modal_kernel_from_powers,
    ssm_prefill,
    ssm_scan,
    ssm_step,
    ssm_step_fused,
    step_weights,
    zero_state,
)
from tnn.model.ssm.modal import PowerTable
from tnn.model.ssm.reduced import (
    MAX_RADIUS,
    _slots,
    fit_reduced,
    fit_residues,
    fit_residues_explicit,
    real_basis,
)
from tnn.model.toeplitz import toeplitz_dense

K = 256  # fitted lags
N_CONV = 64  # "conversion length" splitting the errors into inside / past n
D = 6


def lags(count: int = K) -> torch.Tensor:
    return torch.arange(count, dtype=torch.float64)[:, None]


def smooth_kernels() -> torch.Tensor:
    """Decaying sums of a few exponentials and damped oscillations, like an RPE behind a decay: (K, D)."""
    k = lags()
    gen = torch.Generator().manual_seed(0)
    columns = []
    for _ in range(D):
        rate = 0.9 + 0.08 * torch.rand(3, generator=gen, dtype=torch.float64)
        freq = 0.3 * torch.rand(3, generator=gen, dtype=torch.float64)
        amp = torch.randn(3, generator=gen, dtype=torch.float64)
        columns.append((amp * rate**k * torch.cos(freq * k)).sum(1))
    return torch.stack(columns, dim=1)


def spiky_kernels() -> torch.Tensor:
    """A smooth decaying tail plus large random taps at lags 0..2 (what the FIR head is for)."""
    kernel = smooth_kernels()
    kernel[:3] += 5.0 * torch.randn(3, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return kernel


def nearly_undamped_kernels() -> torch.Tensor:
    """Slowly decaying oscillations, |lambda| = 0.999."""
    k = lags()
    freqs = torch.linspace(0.05, 1.0, D, dtype=torch.float64)
    return 0.999**k * torch.cos(freqs * k)


def check_fit(kernel: torch.Tensor, tolerance: float, fir_length: int) -> None:
    fit = fit_reduced(kernel, length=N_CONV, tolerance=tolerance, max_order=12, fir_length=fir_length)
    assert not fit.fallback.any()
    assert bool((fit.params.poles.abs() < 1).all()) and fit.params.poles.abs().max() <= MAX_RADIUS
    realised = modal_kernel(fit.params, K)
    scale = kernel.abs().amax(0)
    error = ((realised - kernel).abs() / scale).amax(0)
    assert bool((error <= tolerance * (1 + 1e-9)).all())
    torch.testing.assert_close(torch.maximum(fit.error_inside, fit.error_past), error, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(realised[:fir_length], kernel[:fir_length], rtol=0, atol=0)  # the head is exact
    assert fit.n_modes <= 12


@pytest.mark.parametrize("fir_length", [0, 2])
def test_smooth_kernels_fit_with_few_modes(fir_length: int) -> None:
    check_fit(smooth_kernels(), 1e-8, fir_length)  # sums of 3 exponentials: exact up to round-off


def test_spiky_kernels_fit_with_a_fir_head() -> None:
    check_fit(spiky_kernels(), 1e-8, fir_length=3)


def test_nearly_undamped_kernels_fit() -> None:
    check_fit(nearly_undamped_kernels(), 1e-6, fir_length=0)


def test_a_kernel_without_decay_keeps_its_best_stable_fit_falls_back_or_is_refused() -> None:
    """A constant kernel needs |lambda| = 1: the fit pulls the pole inside (error ~ K (1 - MAX_RADIUS)) and misses
    a tight tolerance. By default it keeps its best (stable) fit; with a fallback it takes exact ETSC modes when
    they decay, and is refused when they do not."""
    flat = torch.ones(K, 2, dtype=torch.float64)
    best = fit_reduced(flat, length=N_CONV, tolerance=1e-9, max_order=4, fir_length=0)
    assert best.missed.tolist() == [True, True] and not best.fallback.any()
    assert best.n_modes <= 4 and bool((best.params.poles.abs() <= MAX_RADIUS).all())
    assert bool((best.error_inside > 1e-9).all()) and bool((best.error_inside < 1e-2).all())
    undecayed = torch.ones(N_CONV + 1, 2, dtype=torch.float64)
    with pytest.raises(UnstablePole, match="do not decay"):
        fit_reduced(
            flat,
            length=N_CONV,
            tolerance=1e-9,
            max_order=4,
            fir_length=0,
            etsc_fallback=lambda: etsc(undecayed, torch.ones(2, dtype=torch.float64), method="etsc-tail"),
        )
    loose = fit_reduced(flat, length=N_CONV, tolerance=1e-3, max_order=4, fir_length=0)
    assert bool((loose.params.poles.abs() < 1).all()) and not loose.missed.any()


def noise_and_smooth_channels() -> tuple[torch.Tensor, torch.Tensor, SsmParams]:
    """Channel 0: a decayed white-noise kernel (no few-mode fit exists), channel 1 smooth; gamma, exact ETSC."""
    gamma = torch.full((2,), 0.97, dtype=torch.float64)
    t = torch.randn(N_CONV + 1, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kernel = torch.cat([0.97 ** lags(N_CONV + 1) * t, torch.zeros(K - N_CONV - 1, 2, dtype=torch.float64)])
    smooth = smooth_kernels()[:, :1]
    kernel = torch.cat([kernel[:, :1], smooth], dim=1)  # channel 0 noise, channel 1 smooth
    exact = etsc(torch.cat([t[:, :1], smooth[: N_CONV + 1] / 0.97 ** lags(N_CONV + 1)], 1), gamma, method="etsc-tail")
    return kernel, gamma, exact


def test_a_hard_channel_does_not_widen_its_layer() -> None:
    """The noise channel misses the tolerance and keeps its best fit within max_order: the layer stays at most
    max_order slots wide (not the n/2 + 1 of exact modes), the smooth channel still meets the tolerance."""
    kernel, _, exact = noise_and_smooth_channels()
    fit = fit_reduced(kernel, length=N_CONV, tolerance=1e-6, max_order=6, fir_length=2)
    assert fit.missed.tolist() == [True, False] and not fit.fallback.any()
    assert fit.n_modes <= 6 < exact.n_modes
    assert fit.error_inside[1] <= 1e-6 and fit.error_inside[0] > 1e-6
    assert bool((fit.params.poles.abs() <= MAX_RADIUS).all())
    realised = modal_kernel(fit.params, K)
    error = ((realised - kernel).abs() / kernel.abs().amax(0)).amax(0)  # the reported error is the realised one
    torch.testing.assert_close(error, torch.maximum(fit.error_inside, fit.error_past), rtol=1e-9, atol=1e-15)


def test_a_channel_that_misses_the_tolerance_keeps_exact_etsc_modes_when_asked() -> None:
    """With a fallback the noise channel takes its exact ETSC modes and is then exact to lag n, at the price of
    the whole layer's width."""
    kernel, _, exact = noise_and_smooth_channels()
    fit = fit_reduced(kernel, length=N_CONV, tolerance=1e-6, max_order=6, fir_length=2, etsc_fallback=lambda: exact)
    assert fit.fallback.tolist() == [True, False]
    assert fit.n_modes == exact.n_modes  # the fallback widens the layer to the ETSC mode count
    realised = modal_kernel(fit.params, K)
    torch.testing.assert_close(realised[:N_CONV, 0], kernel[:N_CONV, 0], rtol=0, atol=1e-12)
    assert fit.error_inside[1] <= 1e-6 and bool((fit.params.poles.abs() < 1).all())


def modal_params(n_modes: int = 4, fir_length: int = 3, seed: int = 0) -> ModalParams:
    gen = torch.Generator().manual_seed(seed)
    radius = 0.5 + 0.49 * torch.rand(n_modes, D, generator=gen, dtype=torch.float64)
    angle = math.pi * torch.rand(n_modes, D, generator=gen, dtype=torch.float64)
    angle[0] = 0.0  # a real pole
    weights = torch.complex(*torch.randn(2, n_modes, D, generator=gen, dtype=torch.float64))
    weights[0] = weights[0].real.to(weights.dtype)
    return ModalParams(
        poles=torch.polar(radius, angle),
        weights=weights,
        fir=torch.randn(fir_length, D, generator=gen, dtype=torch.float64),
    )


def candidate_poles(radius: float, seed: int) -> torch.Tensor:
    """(5, 7) candidate poles as the fit makes them: conjugate pairs (upper first), real poles, a zero pole."""
    gen = torch.Generator().manual_seed(seed)
    upper = torch.polar(radius * (0.5 + 0.5 * torch.rand(5, 3, generator=gen, dtype=torch.float64)),
                        math.pi * torch.rand(5, 3, generator=gen, dtype=torch.float64))  # fmt: skip
    real = radius * (2 * torch.rand(5, 1, generator=gen, dtype=torch.float64) - 1)
    poles = torch.stack([upper, upper.conj()], dim=2).flatten(1)  # (5, 6): pairs
    poles = torch.cat([poles, real.to(poles.dtype)], dim=1)  # (5, 7)
    poles[0, 6] = 0  # lambda = 0 (lambda^0 = 1 exactly)
    return poles


@pytest.mark.parametrize("radius", [0.99, 1 - 1e-6])  # closed-form Gram matrix, and its fallback near 1
def test_fit_residues_equals_the_explicit_basis(radius: float) -> None:
    """The fit's residues without the basis (block matmuls, closed-form Gram) against the basis built lag by lag:
    coefficients to 1e-9 relative, max errors to 1e-12 (the same normal equations, summed differently)."""
    poles = candidate_poles(radius, seed=5)
    target = smooth_kernels()[:, :5].T.contiguous()  # (5, K)
    target = target / target.abs().amax(1, keepdim=True)
    fast, fast_error = fit_residues(poles, target)
    slow, slow_error = fit_residues_explicit(poles, target)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9 * slow.abs().max().item())
    torch.testing.assert_close(fast_error, slow_error, rtol=0, atol=1e-12)
    k = torch.arange(K, dtype=torch.float64)[None, :, None]  # the basis itself, by exp(k log lambda)
    powers = torch.exp(k * torch.log(torch.where(poles == 0, 1e-300, poles))[:, None, :])  # (5, K, 7)
    powers[:, 0] = 1.0
    direct = torch.where(poles.imag[:, None, :] < 0, powers.imag, powers.real)
    torch.testing.assert_close(real_basis(poles, K), direct, rtol=0, atol=1e-12)
    # and the fit as good as a QR least squares on that basis (near the unit circle: the explicit fallback)
    best = torch.linalg.lstsq(direct, target[:, :, None], driver="gelsd").solution  # (5, 7, 1)
    best_error = (torch.bmm(direct, best)[:, :, 0] - target).abs().amax(1)
    torch.testing.assert_close(fast_error, best_error, rtol=0, atol=1e-9)


def slots_by_channel(poles: torch.Tensor, residues: torch.Tensor, orders: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Slow twin of the fit's `_slots`: channel by channel in Python (the pre-vectorised code)."""
    per_channel = []
    for c in range(poles.shape[0]):
        lam = poles[c, : int(orders[c])].tolist()
        alpha = residues[c, : int(orders[c])].tolist()
        lower = [j for j, p in enumerate(lam) if p.imag < 0]
        slots = []
        for j, p in enumerate(lam):
            if p.imag > 0:
                partner = min(lower, key=lambda i, p=p: abs(lam[i] - p.conjugate()))
                slots.append((p, complex(alpha[j], alpha[partner])))
            elif p.imag == 0:
                slots.append((complex(p.real, 0.0), complex(alpha[j], 0.0)))
        slots.sort(key=lambda s: -abs(s[0]))
        per_channel.append(slots)
    n_slots = max(1, max(len(s) for s in per_channel))
    slot_poles = torch.zeros(n_slots, poles.shape[0], dtype=torch.complex128)
    slot_weights = torch.zeros_like(slot_poles)
    for c, slots in enumerate(per_channel):
        for i, (p, w) in enumerate(slots):
            slot_poles[i, c], slot_weights[i, c] = p, w
    return slot_poles, slot_weights


def test_vectorised_slots_equal_the_channel_loop() -> None:
    """Slots (a pair's upper pole with alpha + i beta, real poles, by decreasing |lambda|) exactly as the loop made
    them, with duplicate pairs, equal magnitudes, unused slots and a channel of order 0."""
    poles = candidate_poles(0.99, seed=6)
    poles[1, 2:4] = poles[1, 0:2]  # a duplicate pair: both upper poles take the first nearest lower one
    poles[2, 6] = poles[2, 0].abs()  # a real pole as large as a pair
    residues = torch.randn(5, 7, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    orders = torch.tensor([7, 6, 7, 2, 0])
    for got, expected in zip(_slots(poles, residues, orders), slots_by_channel(poles, residues, orders), strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("fir_length", [0, 1, 3])
def test_modal_kernel_equals_its_twins(fir_length: int) -> None:
    params = modal_params(fir_length=fir_length)
    kernel = modal_kernel(params, 600)  # several power chunks
    torch.testing.assert_close(kernel, modal_kernel_from_powers(params, 600), rtol=0, atol=1e-12)
    v = torch.zeros(1, 40, D, dtype=torch.float64)
    v[0, 0] = 1.0  # an impulse: the step loop's response is the kernel
    impulse, _ = ssm_scan(v, zero_state(1, params), step_weights(params))
    torch.testing.assert_close(impulse[0], kernel[:40], rtol=0, atol=1e-12)


@pytest.mark.parametrize("length", [1, 5, 17, 64, 300])  # chunks of 16, 32, 64 tokens, padded in front or not
@pytest.mark.parametrize("fir_length", [0, 3])
def test_modal_prefill_equals_scan(fir_length: int, length: int) -> None:
    """Outputs and state after a block, from zero and from a carried state with FIR history: equal to stepping."""
    params = modal_params(fir_length=fir_length)
    weights = step_weights(params)
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(2, length, D, generator=gen, dtype=torch.float64)
    _, carried = ssm_scan(torch.randn(2, 7, D, generator=gen, dtype=torch.float64), zero_state(2, params), weights)
    for state in (None, carried):
        start = zero_state(2, params) if state is None else state
        expected_out, expected_state = ssm_scan(v, start, weights)
        out, new_state = ssm_prefill(v, state, params)
        torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-11)
        torch.testing.assert_close(new_state, expected_state, rtol=0, atol=1e-11)


def test_kernel_and_power_table_are_kept_and_a_no_op_move_keeps_them() -> None:
    """The realised kernel is computed once for the longest length so far and sliced for shorter ones (the fit,
    the kernel check and past n share it); a no-op move keeps it; a second dtype's power table is the first's cast."""
    params = modal_params(fir_length=3)
    long = params.kernel(300)
    torch.testing.assert_close(long, modal_kernel(params, 300), rtol=0, atol=0)
    short = params.kernel(40)
    assert short.data_ptr() == long.data_ptr()  # a slice, not recomputed
    torch.testing.assert_close(short, modal_kernel(params, 40), rtol=0, atol=1e-15)
    assert params.kernel(40).data_ptr() == long.data_ptr()
    assert params.to(real_dtype=torch.float64) is params  # a no-op move keeps what it kept
    wide = params.power_table(torch.float64)  # a second dtype casts the kept table: the same rounding as afresh
    assert params.power_table() is wide
    assert torch.equal(params.power_table(torch.float32).planes, PowerTable.of(params.poles, torch.float32).planes)


def test_prefill_tables_are_the_kernel_and_pole_powers_and_are_kept() -> None:
    """The chunk tables are built once per layer and chunk size: their Toeplitz block is the dense Toeplitz matrix of
    the realised kernel, their decay planes the pole powers; later prefills (any length) reuse them."""
    params = modal_params(fir_length=3)
    chunk, h, n = 32, 3, params.n_modes
    tables = params.chunk_tables(chunk)
    assert tables.chunk == chunk
    dense = toeplitz_dense(modal_kernel(params, chunk + h))  # (D, C + h, C + h): [d, i, j] = K[i - j]
    torch.testing.assert_close(tables.window[:, :, :chunk], dense[:, h:].transpose(1, 2), rtol=0, atol=1e-15)
    powers = params.poles[None] ** torch.arange(chunk + 1, dtype=torch.float64)[:, None, None]  # (C + 1, N, D)
    driven = tables.window[:, :, chunk:]  # (D, C + h, 2N): row c holds lambda^(C-1-c)
    torch.testing.assert_close(driven[:, chunk - 1, :n], powers[0].real.T, rtol=0, atol=0)
    torch.testing.assert_close(driven[:, 0, n:], powers[chunk - 1].imag.T, rtol=0, atol=1e-14)
    assert not driven[:, chunk:].any()  # the h inputs before a chunk are not its mode inputs
    torch.testing.assert_close(tables.decay_out[:, :n, -1], powers[chunk].real.T, rtol=0, atol=1e-14)
    for length in (17, 30):  # both take the 32-token chunk
        ssm_prefill(torch.randn(1, length, D, dtype=torch.float64), None, params)
    assert params.chunk_tables(chunk) is tables


def test_prefill_in_row_passes_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch rows taken in passes (how a long batch's activations stay in cache) give what one pass gives: logits
    of every position and the state, from a carried state, in float64."""
    model = reduced_model(tiny_model(seed=0), 64)
    tokens = random_tokens(5, 70)
    _, carried = model.prefill(tokens[:, :9])
    expected_logits, expected_state = model.recurrent_logits(tokens[:, 9:], carried, chunk_size=32)
    monkeypatch.setattr(tnn_module, "PREFILL_TOKENS_PER_PASS", 2 * 32)  # two rows per pass: 2 + 2 + 1
    logits, state = model.recurrent_logits(tokens[:, 9:], carried, chunk_size=32)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-12)
    for got, expected in zip(state.layers, expected_state.layers, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fir_length", [0, 3])
def test_float32_prefill_tracks_the_float64_scan(fir_length: int) -> None:
    """The serving dtype: a float32 prefill (tables rounded to float32, modes carried in complex64) over 2,000
    tokens from a carried state stays within 2e-6 relative of stepping in float64 (outputs and state)."""
    params = modal_params(fir_length=fir_length)
    gen = torch.Generator().manual_seed(6)
    v = torch.randn(3, 2000, D, generator=gen, dtype=torch.float64)
    _, carried = ssm_scan(torch.randn(3, 9, D, generator=gen, dtype=torch.float64), zero_state(3, params),
                          step_weights(params))  # fmt: skip
    expected_out, expected_state = ssm_scan(v, carried.clone(), step_weights(params))
    out, state = ssm_prefill(v.float(), carried.float(), params.to(real_dtype=torch.float32))
    assert out.dtype == state.dtype == torch.float32
    assert relative_error(out, expected_out) <= 2e-6
    assert relative_error(state, expected_state) <= 2e-6


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fir_length", [0, 3])
def test_fused_step_equals_the_eager_step(dtype: torch.dtype, fir_length: int) -> None:
    """torch.compile'd step vs the eager in-place twin, on a row range of a pool: 1e-5 relative in float32,
    1e-12 in float64, over 20 steps; skipped where the compiled step never built (it then falls back to the
    eager one, and the comparison would be eager against eager)."""
    params = modal_params(fir_length=fir_length).to(real_dtype=dtype)
    weights = step_weights(params)
    gen = torch.Generator().manual_seed(4)
    pool = torch.randn(9, 2 * params.n_modes + fir_length, D, generator=gen, dtype=torch.float64).to(dtype)
    reference = pool.clone()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for i in range(20):
        if i == 0 and not fused_step_compiled(dtype, "cpu", with_head=fir_length > 0):
            pytest.skip("torch.compile could not build the fused step here (it fell back to the eager one, logged)")
        v = torch.randn(5, D, generator=gen, dtype=torch.float64).to(dtype)
        with torch.inference_mode():
            got = ssm_step_fused(v, pool[:5], weights)
        expected = ssm_step(v, reference[:5], weights)
        assert relative_error(got, expected) <= tolerance
    assert relative_error(pool, reference) <= tolerance
    torch.testing.assert_close(pool[5:], reference[5:], rtol=0, atol=0)  # rows past the view untouched


def reduced_model(model: TnnLM, length: int, tolerance: float = 1e-6) -> TnnLM:
    options = ReducedOptions(tolerance=tolerance, max_order=16, fir_length=2, exact_fallback=True)
    return attach_ssm(model, length=length, method="reduced", reduced=options)


def test_random_model_prefill_and_step_track_the_parallel_forward() -> None:
    """A random tiny model (n = 64), kernel tolerance 1e-6: logits within 1e-4 relative of the TNN inside n
    (float64), within 1e-3 with a float32 state; past n (to 2.5n, where fallback channels use etsc-tail's
    tail) within 2e-2."""
    model = reduced_model(tiny_model(seed=0), 64)
    tokens = random_tokens(2, 160)
    expected = model(tokens)  # (2, 160, V)
    for split in (1, 30, 63):
        got = teacher_forced(model, tokens[:, :64], split)[0]
        assert relative_error(got, expected[:, split - 1 : 64]) <= 1e-4
    single = reduced_model(tiny_model(seed=0, dtype=torch.float32), 64)
    assert relative_error(teacher_forced(single, tokens[:, :64], 40)[0], expected[:, 39:64]) <= 1e-3
    assert relative_error(teacher_forced(model, tokens, 100)[0], expected[:, 99:]) <= 2e-2


def test_golden_fairseq_lm_reduced(golden: Path) -> None:
    """The original implementation's logits (n = 16, positions < n): reduced at tolerance 1e-6 within 1e-4."""
    folder = golden / "lm_decay99_pre_tiny"
    model = reduced_model(load(folder / "checkpoint.pt", dtype=torch.float64), 16)
    tokens = load_file(folder / "inputs.safetensors")["tokens"][:, :16]
    expected = load_file(folder / "expected.safetensors")["logits"][:, :16]
    for split in (1, 8, 15):
        assert relative_error(teacher_forced(model, tokens, split)[0], expected[:, split - 1 :]) <= 1e-4


def test_reduced_conversion_round_trips(tmp_path: Path) -> None:
    model = reduced_model(tiny_model(seed=5), 64, tolerance=1e-4)
    save_model(model, tmp_path / "m")
    loaded = load(tmp_path / "m", dtype=torch.float64)
    assert loaded.config.ssm == model.config.ssm
    tokens = random_tokens(1, 30)
    torch.testing.assert_close(loaded.recurrent_logits(tokens)[0], model.recurrent_logits(tokens)[0])


def test_loading_refuses_an_unstable_pole_naming_the_key(tmp_path: Path) -> None:
    model = reduced_model(tiny_model(seed=6), 32, tolerance=1e-4)
    save_model(model, tmp_path / "m")
    path = tmp_path / "m" / "ssm.safetensors"
    tensors = load_file(path)
    tensors["layers.1.poles.real"][0, 3] = 1.0
    tensors["layers.1.poles.imag"][0, 3] = 0.0
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"layers\.1\.poles.*\|lambda\| >= 1"):
        load(tmp_path / "m")
    tensors["layers.1.poles.real"] = tensors["layers.1.poles.real"][:-1]
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"layers\.1\.poles\.real.*shape"):
        load(tmp_path / "m")


def test_saving_refuses_an_unstable_pole(tmp_path: Path) -> None:
    model = reduced_model(tiny_model(seed=6), 32, tolerance=1e-4)
    broken = copy.deepcopy(model)
    tno = broken.layers[0].gtu.tno
    assert isinstance(tno.ssm, ModalParams)
    poles = tno.ssm.poles.clone()
    poles[0, 0] = 1.0001
    tno.ssm = ModalParams(poles=poles, weights=tno.ssm.weights, fir=tno.ssm.fir)
    with pytest.raises(UnstablePole, match="layer 0"):
        save_model(broken, tmp_path / "b")
