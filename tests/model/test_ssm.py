"""ETSC maths (tnn.model.ssm) against its slow twins: mode sums, token-by-token scans, the TNN kernel itself."""

from __future__ import annotations

import pytest
import torch

from tnn.model.config import ETSC_METHODS, SsmMethod
from tnn.model.ssm import (
    MAX_AMPLIFICATION,
    TAIL_MODE,
    SsmParams,
    etsc,
    pole_power,
    ssm_kernel,
    ssm_kernel_from_modes,
    ssm_prefill,
    ssm_scan,
    step_weights,
    tail_dampings,
    zero_state,
)

METHODS = ETSC_METHODS
D = 5


def coefficients(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Undecayed t (n+1, D) for lags 0..n, smooth-ish and same-signed like an RPE, and gamma (D,)."""
    generator = torch.Generator().manual_seed(seed)
    t = 1.0 + torch.randn(n + 1, D, generator=generator, dtype=torch.float64).cumsum(0) / n
    gamma = 0.8 + 0.19 * torch.rand(D, generator=generator, dtype=torch.float64)
    return t, gamma


def decayed(t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """a_k = gamma^k t_k: (K, D)."""
    return gamma[None, :] ** torch.arange(t.shape[0], dtype=torch.float64)[:, None] * t


@pytest.mark.parametrize("full_state", [False, True])
@pytest.mark.parametrize("n", [7, 8])  # odd and even period m = n + 1
@pytest.mark.parametrize("method", METHODS)
def test_kernel_reconstruction(method: SsmMethod, n: int, full_state: bool) -> None:
    t, gamma = coefficients(n)
    params = etsc(t, gamma, method=method, full_state=full_state)
    expected = decayed(t, gamma)  # (n+1, D)
    from_modes = ssm_kernel_from_modes(params, 4 * n)  # (4n, D) Re sum_j b_j lambda_j^k
    torch.testing.assert_close(from_modes[:n], expected[:n], rtol=0, atol=1e-12)
    torch.testing.assert_close(ssm_kernel(params, 4 * n), from_modes, rtol=0, atol=1e-12)  # fast twin, all lags
    lag_n = -(gamma**n) * t[:n].sum(0) if method == "etsc" else expected[n]  # spurious tap vs true coefficient
    torch.testing.assert_close(from_modes[n], lag_n, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["etsc", "etsc-inclusive"])
def test_kernel_past_n_is_a_decayed_periodic_copy(method: SsmMethod) -> None:
    n = 9
    t, gamma = coefficients(n)
    kernel = ssm_kernel_from_modes(etsc(t, gamma, method=method), 3 * (n + 1))
    m = n + 1
    torch.testing.assert_close(kernel[m:], gamma**m * kernel[:-m], rtol=0, atol=1e-12)  # K_{k+m} = gamma^m K_k


def test_tail_method_past_n_tends_to_a_decayed_constant() -> None:
    """etsc-tail: K_k = rho^k period[k mod m] + gamma^k c; rho < gamma, so K_k / gamma^k -> c past n."""
    n = 16
    t, gamma = coefficients(n)
    params = etsc(t, gamma, method="etsc-tail")
    tail = params.modes == TAIL_MODE
    assert tail.tolist() == [False] * (params.n_modes - 1) + [True]
    c = params.weights[tail][0].real  # (D,)
    assert torch.all(params.decay < gamma)
    lags = torch.arange(20 * n, dtype=torch.float64)[:, None]
    ratio = ssm_kernel_from_modes(params, 20 * n) / gamma**lags  # (20n, D)
    assert (ratio[-1] - c).abs().max() < 1e-8 * c.abs().max()
    # with no extra damping the tail method is the inclusive method: the same kernel at every lag
    undamped = ssm_kernel(etsc(t, gamma, method="etsc-tail", tail_damping=1.0), 4 * n)
    torch.testing.assert_close(undamped, ssm_kernel(etsc(t, gamma, method="etsc-inclusive"), 4 * n))


@pytest.mark.parametrize("method", METHODS)
def test_mode_counts_and_dropped_mode(method: SsmMethod) -> None:
    n = 8
    m = n + 1
    t, gamma = coefficients(n)
    full = etsc(t, gamma, method=method, full_state=True)
    half = etsc(t, gamma, method=method)
    assert full.n_modes == (n if method == "etsc" else n + 1)
    assert half.n_modes == m // 2 + (0 if method == "etsc" else 1)
    if method != "etsc-inclusive":  # the grid period sums to zero, so the dropped b_0 is zero
        assert full.period.sum(0).abs().max() < 1e-12 * full.period.abs().max()


@pytest.mark.parametrize("method", METHODS)
def test_halved_state_equals_full_state(method: SsmMethod) -> None:
    n = 10
    t, gamma = coefficients(n)
    full = etsc(t, gamma, method=method, full_state=True)
    half = etsc(t, gamma, method=method)
    torch.testing.assert_close(ssm_kernel_from_modes(half, 3 * n), ssm_kernel_from_modes(full, 3 * n))
    v = torch.randn(2, 3 * n, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out_full, _ = ssm_scan(v, zero_state(2, full), step_weights(full))
    out_half, _ = ssm_scan(v, zero_state(2, half), step_weights(half))
    torch.testing.assert_close(out_half, out_full, rtol=0, atol=1e-12)


def scanned_state(params: SsmParams, length: int, seed: int) -> torch.Tensor:
    """A reachable state: the one after scanning `length` random inputs from zero. (2, N, D)."""
    v = torch.randn(2, length, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return ssm_scan(v, zero_state(2, params), step_weights(params))[1]


@pytest.mark.parametrize("length", [1, 6, 31])  # 31 > 3m: the folded FFT sums several periods
@pytest.mark.parametrize("full_state", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_prefill_equals_scan(method: SsmMethod, full_state: bool, length: int) -> None:
    n = 8
    t, gamma = coefficients(n)
    params = etsc(t, gamma, method=method, full_state=full_state)
    v = torch.randn(2, length, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for state in (None, scanned_state(params, 13, seed=3)):
        start = zero_state(2, params) if state is None else state
        expected_out, expected_state = ssm_scan(v, start, step_weights(params))
        out, new_state = ssm_prefill(v, state, params)
        torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-12)
        torch.testing.assert_close(new_state, expected_state, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_chunked_prefill_equals_one_shot(method: SsmMethod) -> None:
    n = 8
    t, gamma = coefficients(n)
    params = etsc(t, gamma, method=method)
    v = torch.randn(3, 40, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected_out, expected_state = ssm_prefill(v, None, params)
    outs, state = [], None
    for start in range(0, 40, 7):
        out, state = ssm_prefill(v[:, start : start + 7], state, params)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), expected_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(state, expected_state, rtol=0, atol=1e-12)


def test_float32_state_from_a_float64_conversion() -> None:
    """Params cast to float32 planes after a float64 conversion: outputs within float32 round-off (spec §6.7)."""
    n = 64
    t, gamma = coefficients(n)
    params = etsc(t, gamma)
    v = torch.randn(2, n, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected, _ = ssm_scan(v, zero_state(2, params), step_weights(params))
    single = params.to(real_dtype=torch.float32)
    assert single.weights.dtype == torch.complex64
    out, state = ssm_scan(v.float(), zero_state(2, single), step_weights(single))
    assert state.dtype == torch.float32 and out.dtype == torch.float32
    assert (out.double() - expected).abs().max() / expected.abs().max() < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_pole_power_matches_repeated_multiplication(method: SsmMethod) -> None:
    n = 6
    t, gamma = coefficients(n)
    params = etsc(t, gamma.clamp(min=0.99), method=method)
    expected = torch.ones_like(params.poles)
    for exponent in range(1, 200):
        expected = expected * params.poles
        if exponent in (1, 7, 199):
            torch.testing.assert_close(pole_power(params, exponent), expected, rtol=1e-12, atol=1e-15)


def test_tail_damping_is_chosen_per_channel_within_the_amplification_bound() -> None:
    """A saturating channel (like an RPE behind SimpleRMSNorm) gets the strongest damping; one that keeps
    changing up to lag n gets less, so that its period (and the complex64 cancellation) stays bounded."""
    n = 64
    lags = torch.arange(n + 1, dtype=torch.float64)
    saturating = 1.0 - torch.exp(-lags / 4)  # flat long before n
    growing = lags / n  # still changing at lag n
    t = torch.stack([saturating, growing, torch.zeros(n + 1)], dim=1)  # (n+1, 3)
    damping = tail_dampings(t)
    assert damping[0] >= 1e5 and 1.0 <= damping[1] <= 10.0
    params = etsc(t, torch.full((3,), 0.97, dtype=torch.float64), method="etsc-tail")
    assert torch.all(params.period.abs().amax(0)[:2] <= MAX_AMPLIFICATION * t.abs().amax(0)[:2])
    expected = 0.97 ** lags[:, None] * t
    torch.testing.assert_close(ssm_kernel_from_modes(params, n + 1), expected, rtol=0, atol=1e-12)
