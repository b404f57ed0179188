"""ETSC: a causal Toeplitz kernel as a diagonal state space model with poles on a DFT grid (spec §6).

Per channel c the kernel a_k = gamma_c^k t_k (k = 0..n-1, t the undecayed coefficients) is matched by
K_k = Re sum_j b_j lambda_j^k with lambda_j = rho_c exp(-2 pi i j / m), m = n + 1, b = IDFT of the padded period.
The realised kernel for every lag k >= 0 is K_k = rho^k * period[k mod m] (+ gamma^k c with a tail mode).

Methods:
- "etsc": the published algorithm, rho = gamma. Period = [t_0 .. t_{n-1}, -sum t]; the j = 0 mode (b_0 = 0) is
  dropped. Exact for lags < n; a spurious tap -gamma^n sum(t) at lag n (spec §6.4).
- "etsc-inclusive": rho = gamma, period = [t_0 .. t_n] with t_n the true coefficient at lag n; the j = 0 mode is
  kept. Exact for lags <= n; beyond, both methods repeat the period damped by gamma^m.
- "etsc-tail": exact for lags <= n, and past n close to the TNN. One real "tail" mode with pole gamma and weight
  c (a weighted mean of t over the late lags) carries the kernel past n as gamma^k c, which is where an RPE
  behind a SimpleRMSNorm saturates; the grid modes fit the rest, t_k - c, with radius rho = gamma / r where
  r^n = A, so the periodic copy past n is about A times weaker than with etsc-inclusive (A = 1 is
  etsc-inclusive). Period = r^k (t_k - c), k = 0..n, which sums to zero for c = sum r^k t_k / sum r^k, so
  b_0 = 0 is dropped and the state has as many modes as etsc-inclusive. A is chosen per channel: the largest
  of TAIL_DAMPINGS whose period stays within MAX_AMPLIFICATION x max|t| (large periods would cost float32
  precision through cancelling modes).

Shapes: B batch, L tokens, D channels, N kept modes, m = n + 1 period length.
Real kernels make modes j and m - j conjugate; unless `full_state`, only j <= m/2 is kept and b_j is doubled
for modes whose conjugate was dropped, so that Re(sum_j S_j) is unchanged. The tail mode (mode index
TAIL_MODE, always last) has a real positive pole and a real weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tnn.model.config import SsmMethod
from tnn.model.toeplitz import toeplitz_matmul_fft

TAIL_MODE = -1  # mode index of the real tail mode of "etsc-tail" (not on the DFT grid)
# etsc-tail: candidate dampings A (the grid modes decay A times faster than gamma^k over n lags), and the bound on
# max|period| / max|t| that keeps complex64 decoding at the etsc-inclusive error (A = 1 always satisfies it).
TAIL_DAMPINGS = tuple(10.0 ** (k / 2) for k in range(17))  # 1 .. 1e8
MAX_AMPLIFICATION = 4.0


@dataclass(frozen=True)
class SsmParams:
    """One layer's recurrence. All tensors share a device; complex ones share a dtype."""

    poles: Tensor  # (N, D) complex: lambda_j = rho * exp(-2 pi i j / m); the tail mode's pole is gamma (real)
    weights: Tensor  # (N, D) complex: b_j, doubled where the conjugate mode was dropped; tail: c (real)
    modes: Tensor  # (N,) int64: DFT index j of each kept mode, TAIL_MODE for the tail mode
    period: Tensor  # (m, D) real: one period of the grid modes' kernel, before the decay rho^k
    decay: Tensor  # (D,) real: rho, the grid poles' radius per channel (gamma except for etsc-tail)

    @property
    def n_modes(self) -> int:
        return self.modes.shape[0]

    @property
    def fir(self) -> Tensor:
        """(0, D): ETSC has no FIR head (the step's shared layout, tnn.model.ssm.step)."""
        return self.period.new_zeros(0, self.period.shape[1])

    @property
    def grid(self) -> Tensor:
        """(N,) bool: which modes lie on the DFT grid (all but the tail mode)."""
        return self.modes != TAIL_MODE

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


def etsc(
    t: Tensor,
    decay: Tensor,
    *,
    method: SsmMethod = "etsc-tail",
    full_state: bool = False,
    tail_damping: float | None = None,
) -> SsmParams:
    """Convert undecayed coefficients into an SSM, in float64/complex128.

    t: (n + 1, D) undecayed kernel for lags 0..n (the "etsc" method ignores t[n]); decay: (D,) gamma.
    tail_damping: A for "etsc-tail", the same for every channel; None chooses it per channel.
    """
    # once per layer and small: on the CPU, whatever device the model is on (SsmParams.to moves the result)
    t = t.to(device="cpu", dtype=torch.float64)
    decay = decay.to(device="cpu", dtype=torch.float64)
    n = t.shape[0] - 1
    m = n + 1
    radius = decay  # (D,) of the grid poles
    tail: Tensor | None = None  # (D,) weight c of the tail mode
    if method == "etsc":
        period = torch.cat([t[:n], -t[:n].sum(0, keepdim=True)], dim=0)  # (m, D), sums to zero
        first_mode = 1  # b_0 = 0 exactly by the choice of the pad
    elif method == "etsc-inclusive":
        period = t  # (m, D): lag n is the true coefficient
        first_mode = 0
    elif method == "etsc-tail":
        damping = tail_dampings(t) if tail_damping is None else torch.full_like(decay, tail_damping)  # (D,) A
        growth = damping[None, :] ** (torch.arange(m, dtype=torch.float64)[:, None] / n)  # (m, D) r^k, r^n = A
        tail, period = _tail_split(t, growth)  # (D,) c; (m, D) sums to zero, rho^k period_k + gamma^k c = a_k
        radius = decay / growth[1]  # rho = gamma / r
        first_mode = 1
    else:
        raise ValueError(f"unknown SSM method {method!r}; expected 'etsc', 'etsc-inclusive' or 'etsc-tail'")
    b = torch.fft.ifft(period.to(torch.complex128), dim=0)  # (m, D): b_j = 1/m sum_k period_k e^{+2 pi i jk/m}

    last_mode = m - 1 if full_state else m // 2
    modes = torch.arange(first_mode, last_mode + 1)  # (N,)
    multiplicity = torch.ones(len(modes), dtype=torch.float64)
    if not full_state:
        # mode j stands for j and m - j unless it is its own conjugate (j = 0, or j = m/2 for even m)
        multiplicity[(modes != 0) & (2 * modes != m)] = 2.0
    angles = -2.0 * math.pi * modes.to(torch.float64) / m  # (N,)
    unit = torch.polar(torch.ones_like(angles), angles)  # (N,) exp(-2 pi i j / m)
    poles = unit[:, None] * radius[None, :].to(torch.complex128)  # (N, D)
    weights = b[modes] * multiplicity[:, None]  # (N, D)
    if tail is not None:
        poles = torch.cat([poles, decay[None].to(torch.complex128)])  # (N+1, D)
        weights = torch.cat([weights, tail[None].to(torch.complex128)])
        modes = torch.cat([modes, torch.tensor([TAIL_MODE])])
    return SsmParams(poles=poles, weights=weights, modes=modes, period=period, decay=radius)


def _tail_split(t: Tensor, growth: Tensor) -> tuple[Tensor, Tensor]:
    """c = sum_k r^k t_k / sum_k r^k (D,) and the grid period r^k (t_k - c) (m, D). growth: (m, D) or (m, 1).

    The period must sum to zero, or its dropped j = 0 mode leaves an error b_0 rho^k at every lag. Its late
    entries carry round-off of order eps r^k |t_k|, so the sum is forced to zero at lag n, where the realised
    kernel scales it back by rho^n = gamma^n / r^n (an error of order eps gamma^n |t_n|)."""
    tail = (growth * t).sum(0) / growth.sum(0)
    period = growth * (t - tail)
    period[-1] -= period.sum(0)
    return tail, period


def tail_dampings(t: Tensor) -> Tensor:
    """Per channel the largest A in TAIL_DAMPINGS with max|period| <= MAX_AMPLIFICATION max|t|. t: (m, D) -> (D,)."""
    n = t.shape[0] - 1
    lags = torch.arange(n + 1, dtype=torch.float64)[:, None] / n  # (m, 1)
    bound = MAX_AMPLIFICATION * t.abs().amax(0)  # (D,)
    best = torch.ones(t.shape[1], dtype=torch.float64)
    for damping in TAIL_DAMPINGS:
        _, period = _tail_split(t, damping**lags)
        best = torch.where(period.abs().amax(0) <= bound, damping, best)
    return best


def decay_powers(decay: Tensor, exponents: Tensor) -> Tensor:
    """gamma^k for each exponent k: (K,) x (D,) -> (K, D), in float64 log space (no overflow or drift)."""
    log_decay = torch.log(decay.to(torch.float64))  # (D,); gamma = 1 gives exactly 0
    return torch.exp(exponents.to(torch.float64)[:, None] * log_decay[None, :])


def ssm_kernel(params: SsmParams, length: int) -> Tensor:
    """The realised kernel K_k = rho^k period[k mod m] (+ gamma^k c) for k = 0..length-1: (length, D) in
    params' real dtype."""
    m = params.period.shape[0]
    lags = torch.arange(length, device=params.period.device)
    powers = decay_powers(params.decay, lags).to(params.period.dtype)  # (length, D)
    kernel = powers * params.period[lags % m]
    for row in torch.nonzero(~params.grid).flatten().tolist():  # the tail mode: a real pole and weight
        tail_powers = decay_powers(params.poles[row].real, lags).to(params.period.dtype)  # (length, D)
        kernel = kernel + tail_powers * params.weights[row].real
    return kernel


def ssm_kernel_from_modes(params: SsmParams, lags: int | Tensor) -> Tensor:
    """Slow twin of `ssm_kernel`: K_k = Re sum_j b_j lambda_j^k, summed mode by mode in complex128.
    lags: a count (lags 0..lags-1) or the lags themselves ((L,) int). Returns (L, D) float64."""
    lags = torch.arange(lags) if isinstance(lags, int) else lags
    exponents = lags.to(device=params.poles.device, dtype=torch.float64)
    poles = params.poles.to(torch.complex128)  # (N, D)
    powers = torch.exp(exponents[:, None, None] * torch.log(poles)[None])  # (L, N, D)
    return (powers * params.weights.to(torch.complex128)[None]).sum(1).real


def etsc_prefill(v: Tensor, state: Tensor | None, params: SsmParams) -> tuple[Tensor, Tensor]:
    """Outputs and final complex state for a block of L tokens, continuing from `state` (None: zero state).

    No loop over positions: the outputs are one FFT convolution with the realised kernel plus the
    contribution of the incoming state, and the new state is one m-point FFT of the decay-weighted,
    folded input per channel (plus a decay-weighted sum for the tail mode).
    v: (B, L, D) real -> o (B, L, D), state (B, N, D) complex (the step's planes are built from it by the caller).
    """
    batch, length, channels = v.shape
    m = params.period.shape[0]
    complex_dtype = params.weights.dtype
    real_dtype = params.period.dtype
    grid = params.grid  # (N,) bool

    o = toeplitz_matmul_fft(v.to(real_dtype), ssm_kernel(params, length))  # (B, L, D)

    # grid modes from this block: S_j = b_j sum_r lambda_j^r v_{L-1-r} = b_j * DFT_j(w folded mod m)
    reversed_lags = torch.arange(length, device=v.device)
    flipped = v.flip(1).to(real_dtype)  # (B, L, D): position r is v_{L-1-r}
    weighted = flipped * decay_powers(params.decay, reversed_lags).to(real_dtype)  # (B, L, D)
    n_periods = -(-length // m)
    folded = torch.nn.functional.pad(weighted, (0, 0, 0, n_periods * m - length))  # (B, P*m, D)
    folded = folded.view(batch, n_periods, m, channels).sum(1)  # (B, m, D)
    spectrum = torch.fft.fft(folded.to(complex_dtype), dim=1)  # (B, m, D)
    new_state = torch.empty(batch, params.n_modes, channels, dtype=complex_dtype, device=v.device)  # (B, N, D)
    new_state[:, grid] = params.weights[grid] * spectrum[:, params.modes[grid]]
    tail_rows = torch.nonzero(~grid).flatten().tolist()
    for row in tail_rows:  # S = c sum_r gamma^r v_{L-1-r}
        tail_powers = decay_powers(params.poles[row].real, reversed_lags).to(real_dtype)  # (L, D)
        new_state[:, row] = params.weights[row] * (flipped * tail_powers).sum(1).to(complex_dtype)

    if state is not None:
        # outputs: + Re sum_j lambda_j^{i+1} S_j = rho^{i+1} Re DFT_{(i+1) mod m}(S placed on the grid)
        grid_state = state.new_zeros(batch, m, channels)  # (B, m, D)
        grid_state[:, params.modes[grid]] = state[:, grid]
        grid_spectrum = torch.fft.fft(grid_state, dim=1)  # (B, m, D)
        steps = torch.arange(1, length + 1, device=v.device)
        carried = grid_spectrum[:, steps % m].real * decay_powers(params.decay, steps).to(real_dtype)  # (B, L, D)
        for row in tail_rows:  # + gamma^{i+1} Re S_tail
            tail_powers = decay_powers(params.poles[row].real, steps).to(real_dtype)  # (L, D)
            carried = carried + tail_powers * state[:, row, None].real
        o = o + carried
        new_state = new_state + pole_power(params, length) * state
    return o.to(v.dtype), new_state


def pole_power(params: SsmParams, exponent: int) -> Tensor:
    """lambda_j^exponent as (N, D), exact for large exponents (the phase is reduced mod m first)."""
    m = params.period.shape[0]
    phase = (params.modes * exponent) % m  # (N,); the tail mode's pole is real, its phase is unused
    angles = torch.where(params.grid, -2.0 * math.pi * phase.to(torch.float64) / m, 0.0)
    unit = torch.polar(torch.ones_like(angles), angles)  # (N,)
    radius = torch.where(params.grid[:, None], params.decay[None, :], params.poles.real)  # (N, D)
    magnitude = torch.exp(exponent * torch.log(radius.to(torch.float64)))  # (N, D)
    return (unit[:, None] * magnitude).to(params.weights.dtype)
