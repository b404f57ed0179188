"""ETSC: a causal Toeplitz kernel as a diagonal state space model with poles on a DFT grid (spec §6).

Per channel c the kernel a_k = gamma_c^k t_k (k = 0..n-1, t the undecayed coefficients) is matched by
K_k = Re sum_j b_j lambda_j^k with lambda_j = gamma_c exp(-2 pi i j / m), m = n + 1, b = IDFT of the padded period.
The realised kernel for every lag k >= 0 is K_k = gamma^k * period[k mod m] (spec §6.4).

Methods:
- "etsc": the published algorithm. Period = [t_0 .. t_{n-1}, -sum t]; the j = 0 mode (b_0 = 0) is dropped.
  Exact for lags < n; a spurious tap -gamma^n sum(t) at lag n.
- "etsc-inclusive": period = [t_0 .. t_n] with t_n the true coefficient at lag n; the j = 0 mode is kept.
  Exact for lags <= n; beyond, both methods repeat the period damped by gamma^m.

Shapes: B batch, L tokens, D channels, N kept modes, m = n + 1 period length.
Real kernels make modes j and m - j conjugate; unless `full_state`, only j <= m/2 is kept and b_j is doubled
for modes whose conjugate was dropped, so that Re(sum_j S_j) is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tnn.model.config import SsmMethod
from tnn.model.toeplitz import toeplitz_matmul_fft


@dataclass(frozen=True)
class SsmParams:
    """One layer's recurrence. All tensors share a device; complex ones share a dtype."""

    poles: Tensor  # (N, D) complex: lambda_j = gamma * exp(-2 pi i j / m)
    weights: Tensor  # (N, D) complex: b_j, doubled where the conjugate mode was dropped
    modes: Tensor  # (N,) int64: DFT index j of each kept mode
    period: Tensor  # (m, D) real: one period of the undecayed realised kernel
    decay: Tensor  # (D,) real: gamma per channel (1 for models without decay)

    @property
    def n_modes(self) -> int:
        return self.modes.shape[0]

    def to(self, device: torch.device | str | None = None, real_dtype: torch.dtype | None = None) -> SsmParams:
        real_dtype = real_dtype or self.period.dtype
        complex_dtype = complex_dtype_for(real_dtype)
        return SsmParams(
            poles=self.poles.to(device=device, dtype=complex_dtype),
            weights=self.weights.to(device=device, dtype=complex_dtype),
            modes=self.modes.to(device=device),
            period=self.period.to(device=device, dtype=real_dtype),
            decay=self.decay.to(device=device, dtype=real_dtype),
        )


def complex_dtype_for(real_dtype: torch.dtype) -> torch.dtype:
    """complex128 for float64, complex64 otherwise (bf16/fp16/fp32 models keep a complex64 state)."""
    return torch.complex128 if real_dtype == torch.float64 else torch.complex64


def etsc(t: Tensor, decay: Tensor, *, method: SsmMethod = "etsc-inclusive", full_state: bool = False) -> SsmParams:
    """Convert undecayed coefficients into an SSM, in float64/complex128.

    t: (n + 1, D) undecayed kernel for lags 0..n (the "etsc" method ignores t[n]); decay: (D,) gamma.
    """
    t = t.to(torch.float64)
    decay = decay.to(torch.float64)
    n = t.shape[0] - 1
    m = n + 1
    if method == "etsc":
        period = torch.cat([t[:n], -t[:n].sum(0, keepdim=True)], dim=0)  # (m, D), sums to zero
        first_mode = 1  # b_0 = 0 exactly by the choice of the pad
    elif method == "etsc-inclusive":
        period = t  # (m, D): lag n is the true coefficient
        first_mode = 0
    else:
        raise ValueError(f"unknown SSM method {method!r}; expected 'etsc' or 'etsc-inclusive'")
    b = torch.fft.ifft(period.to(torch.complex128), dim=0)  # (m, D): b_j = 1/m sum_k period_k e^{+2 pi i jk/m}

    last_mode = m - 1 if full_state else m // 2
    modes = torch.arange(first_mode, last_mode + 1)  # (N,)
    multiplicity = torch.ones(len(modes), dtype=torch.float64)
    if not full_state:
        # mode j stands for j and m - j unless it is its own conjugate (j = 0, or j = m/2 for even m)
        multiplicity[(modes != 0) & (2 * modes != m)] = 2.0
    angles = -2.0 * math.pi * modes.to(torch.float64) / m  # (N,)
    unit = torch.polar(torch.ones_like(angles), angles)  # (N,) exp(-2 pi i j / m)
    poles = unit[:, None] * decay[None, :].to(torch.complex128)  # (N, D)
    weights = b[modes] * multiplicity[:, None]  # (N, D)
    return SsmParams(poles=poles, weights=weights, modes=modes, period=period, decay=decay)


def decay_powers(decay: Tensor, exponents: Tensor) -> Tensor:
    """gamma^k for each exponent k: (K,) x (D,) -> (K, D), in float64 log space (no overflow or drift)."""
    log_decay = torch.log(decay.to(torch.float64))  # (D,); gamma = 1 gives exactly 0
    return torch.exp(exponents.to(torch.float64)[:, None] * log_decay[None, :])


def ssm_kernel(params: SsmParams, length: int) -> Tensor:
    """The realised kernel K_k = gamma^k period[k mod m] for k = 0..length-1: (length, D) in params' real dtype."""
    m = params.period.shape[0]
    lags = torch.arange(length, device=params.period.device)
    powers = decay_powers(params.decay, lags).to(params.period.dtype)  # (length, D)
    return powers * params.period[lags % m]


def ssm_kernel_from_modes(params: SsmParams, length: int) -> Tensor:
    """Slow twin of `ssm_kernel`: K_k = Re sum_j b_j lambda_j^k, summed mode by mode in complex128."""
    lags = torch.arange(length, device=params.poles.device, dtype=torch.float64)
    poles = params.poles.to(torch.complex128)  # (N, D)
    powers = torch.exp(lags[:, None, None] * torch.log(poles)[None])  # (length, N, D)
    return (powers * params.weights.to(torch.complex128)[None]).sum(1).real


def ssm_step(v: Tensor, state: Tensor, params: SsmParams) -> tuple[Tensor, Tensor]:
    """One token: S <- lambda S + b v, o = Re sum_j S_j.  v: (B, D) real, state: (B, N, D) complex."""
    state = params.poles * state + params.weights * v[:, None, :].to(state.dtype)  # (B, N, D)
    return state.real.sum(1).to(v.dtype), state  # (B, D)


def ssm_scan(v: Tensor, state: Tensor, params: SsmParams) -> tuple[Tensor, Tensor]:
    """Slow twin of `ssm_prefill`: `ssm_step` token by token. v: (B, L, D) -> o (B, L, D), state (B, N, D)."""
    outputs = []
    for i in range(v.shape[1]):
        o, state = ssm_step(v[:, i], state, params)
        outputs.append(o)
    return torch.stack(outputs, dim=1), state


def zero_state(batch: int, params: SsmParams) -> Tensor:
    """(B, N, D) complex zeros in the params' complex dtype."""
    return params.weights.new_zeros(batch, *params.weights.shape)


def ssm_prefill(v: Tensor, state: Tensor | None, params: SsmParams) -> tuple[Tensor, Tensor]:
    """Outputs and final state for a block of L tokens, continuing from `state` (None: zero state).

    No loop over positions: the outputs are one FFT convolution with the realised kernel plus the
    contribution of the incoming state, and the new state is one m-point FFT of the decay-weighted,
    folded input per channel. v: (B, L, D) real -> o (B, L, D), state (B, N, D) complex.
    """
    batch, length, channels = v.shape
    m = params.period.shape[0]
    complex_dtype = params.weights.dtype
    real_dtype = params.period.dtype

    o = toeplitz_matmul_fft(v.to(real_dtype), ssm_kernel(params, length))  # (B, L, D)

    # state from this block: S_j = b_j sum_r lambda_j^r v_{L-1-r} = b_j * DFT_j(w folded mod m)
    reversed_lags = torch.arange(length, device=v.device)
    weighted = v.flip(1).to(real_dtype) * decay_powers(params.decay, reversed_lags).to(real_dtype)  # (B, L, D)
    n_periods = -(-length // m)
    folded = torch.nn.functional.pad(weighted, (0, 0, 0, n_periods * m - length))  # (B, P*m, D)
    folded = folded.view(batch, n_periods, m, channels).sum(1)  # (B, m, D)
    spectrum = torch.fft.fft(folded.to(complex_dtype), dim=1)  # (B, m, D)
    new_state = params.weights * spectrum[:, params.modes]  # (B, N, D)

    if state is not None:
        # outputs: + Re sum_j lambda_j^{i+1} S_j = gamma^{i+1} Re DFT_{(i+1) mod m}(S placed on the grid)
        grid = state.new_zeros(batch, m, channels)  # (B, m, D)
        grid[:, params.modes] = state
        grid_spectrum = torch.fft.fft(grid, dim=1)  # (B, m, D)
        steps = torch.arange(1, length + 1, device=v.device)
        carried = grid_spectrum[:, steps % m].real * decay_powers(params.decay, steps).to(real_dtype)  # (B, L, D)
        o = o + carried
        new_state = new_state + pole_power(params, length) * state
    return o.to(v.dtype), new_state


def pole_power(params: SsmParams, exponent: int) -> Tensor:
    """lambda_j^exponent as (N, D), exact for large exponents (the phase is reduced mod m first)."""
    m = params.period.shape[0]
    phase = (params.modes * exponent) % m  # (N,)
    angles = -2.0 * math.pi * phase.to(torch.float64) / m
    unit = torch.polar(torch.ones_like(angles), angles)  # (N,)
    magnitude = decay_powers(params.decay, torch.tensor([exponent], device=params.decay.device))  # (1, D)
    return (unit[:, None] * magnitude).to(params.weights.dtype)
