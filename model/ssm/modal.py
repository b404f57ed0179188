"""A diagonal SSM with arbitrary stable poles and an optional FIR head: the reduced-order recurrence.

Per channel the realised kernel is
    K_k = fir_k                                  for k < h  (an exact head: the first h lags)
    K_k = Re sum_j w_j lambda_j^(k - h)          for k >= h (N damped modes fed the input delayed by h)
so the modes never contribute to the head and the head never to the tail. A complex-conjugate pair is one
mode with its weight doubled (the real part of the sum is unchanged); a real pole has a real weight; unused
slots (channels needing fewer modes than the layer) have lambda = 0, w = 0. Every |lambda| < 1.

Step (tnn.model.ssm.step): S <- lambda S + w v_{t-h};  o_t = Re sum_j S_j + sum_{i<h} fir_i v_{t-i}.
Prefill here: outputs by one FFT convolution with the realised kernel; the final modes by a chunked contraction
of the input with pole powers (no Python loop over positions), continuing from a carried state and history.

Shapes: B batch, L tokens, D channels, N modes, h FIR head length, C a chunk of lags.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from tnn.model.toeplitz import toeplitz_matmul_fft

POWER_CHUNK_ELEMENTS = 1 << 20  # a chunk of pole powers (C, N, D) complex128 stays at 16 MB
MAX_POWER_CHUNK = 256  # lags per chunk at most
MAX_CACHED_KERNEL_LAGS = 4096  # prefill keeps each layer's realised kernel up to this many lags


class UnstablePole(ValueError):
    """A pole with |lambda| >= 1: the recurrence would not forget (or would blow up)."""


@dataclass(frozen=True)
class ModalParams:
    """One layer's reduced-order recurrence. Complex tensors share a dtype; `fir` is the real dtype."""

    poles: Tensor  # (N, D) complex, |lambda| < 1
    weights: Tensor  # (N, D) complex: w_j, doubled for a conjugate pair
    fir: Tensor  # (h, D) real: exact taps for lags 0..h-1 (h = 0: no head, modes fed v_t)

    @property
    def n_modes(self) -> int:
        return self.poles.shape[0]

    def kernel(self, length: int) -> Tensor:
        """`modal_kernel(self, length)`, kept for the longest length asked so far (up to MAX_CACHED_KERNEL_LAGS)
        and sliced for shorter ones: every prefill needs it and K_k depends only on k. (length, D)."""
        cached = self.__dict__.get("_kernel")
        if cached is not None and cached.shape[0] >= length:
            return cached[:length]
        with torch.inference_mode(False):  # a normal tensor: usable later with autograd on, not only in serving
            kernel = modal_kernel(self, length)
        if length <= MAX_CACHED_KERNEL_LAGS:
            object.__setattr__(self, "_kernel", kernel)  # a cache, not a field (the dataclass is frozen)
        return kernel

    def power_table(self, real_dtype: torch.dtype | None = None) -> PowerTable:
        """The pole powers of one chunk of lags with planes in `real_dtype` (default fir's), kept per dtype (every
        prefill needs them; they depend on the poles only). A second dtype casts the first's planes: both are the
        same complex128 powers rounded once."""
        real_dtype = real_dtype or self.fir.dtype
        tables: dict[torch.dtype, PowerTable] = self.__dict__.setdefault("_power_tables", {})  # a cache, not a field
        if real_dtype not in tables:
            with torch.inference_mode(False):
                known = next(iter(tables.values()), None)
                tables[real_dtype] = PowerTable.of(self.poles, real_dtype) if known is None else known.cast(real_dtype)
        return tables[real_dtype]

    def to(self, device: torch.device | str | None = None, real_dtype: torch.dtype | None = None) -> ModalParams:
        real_dtype = real_dtype or self.fir.dtype
        complex_dtype = torch.complex128 if real_dtype == torch.float64 else torch.complex64
        poles = self.poles.to(device=device, dtype=complex_dtype)
        weights = self.weights.to(device=device, dtype=complex_dtype)
        fir = self.fir.to(device=device, dtype=real_dtype)
        if poles is self.poles and weights is self.weights and fir is self.fir:
            return self  # already there: keep the kept kernel and power table
        return ModalParams(poles=poles, weights=weights, fir=fir)


def require_stable(poles: Tensor, what: str) -> None:
    """Raise UnstablePole naming `what` if any |lambda| >= 1 (or is not finite)."""
    radius = poles.abs()
    bad = ~(radius < 1.0)  # NaN counts as unstable
    if bool(bad.any()):
        worst = radius[bad].max().item() if bool(torch.isfinite(radius[bad]).any()) else float("nan")
        raise UnstablePole(f"{what}: {int(bad.sum())} pole(s) with |lambda| >= 1 (largest {worst:.9g})")


def pole_power_chunks(poles: Tensor, length: int, first: int = 0) -> Iterator[tuple[int, Tensor]]:
    """(start, lambda^(first + start .. first + start + C - 1)) over exponents 0..length-1 in chunks,
    (C, N, D) complex128. Within a chunk by cumulative products from a base power: no log of lambda = 0."""
    poles = poles.to(torch.complex128)
    # never more lags than asked for: a short prompt's prefill must not pay for a full chunk of powers
    chunk = max(2, min(MAX_POWER_CHUNK, POWER_CHUNK_ELEMENTS // max(1, poles.numel()), length))
    steps = torch.cat([torch.ones_like(poles)[None], poles.expand(chunk - 1, *poles.shape)])
    within = torch.cumprod(steps, dim=0)  # (C, N, D): lambda^0 .. lambda^(C-1)
    chunk_factor = within[-1] * poles  # lambda^C
    base = _integer_power(poles, first)  # (N, D)
    for start in range(0, length, chunk):
        size = min(chunk, length - start)
        yield start, within[:size] * base
        base = base * chunk_factor


@dataclass(frozen=True)
class PowerTable:
    """lambda^0 .. lambda^(C-1) of a layer's poles as real planes, channels first, for the prefill's batched
    real matmuls: planes (D, 2N, C) = [Re; Im] in the state's real dtype (computed in complex128, then cast), and
    lambda^C (N, D) complex128 to step from one chunk to the next. A contraction with a chunk of inputs is exact
    up to the real dtype's rounding of each power (6e-8 relative in float32), the same as the complex64 powers
    it replaces."""

    planes: Tensor  # (D, 2N, C) real
    step: Tensor  # (N, D) complex128: lambda^C
    poles: Tensor  # (N, D) complex128

    @property
    def chunk(self) -> int:
        return self.planes.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.planes.dtype

    @staticmethod
    def of(poles: Tensor, real_dtype: torch.dtype) -> PowerTable:
        _, within = next(pole_power_chunks(poles, MAX_POWER_CHUNK))  # (C, N, D) complex128
        planes = torch.cat([within.real, within.imag], dim=1).permute(2, 1, 0).to(real_dtype).contiguous()
        wide = poles.to(torch.complex128)
        return PowerTable(planes=planes, step=within[-1] * wide, poles=wide)

    def cast(self, real_dtype: torch.dtype) -> PowerTable:
        """The same table with planes in `real_dtype` (exact from float64; float32 planes are not widened back)."""
        if self.dtype != torch.float64 and real_dtype != self.dtype:
            return PowerTable.of(self.poles, real_dtype)
        return PowerTable(planes=self.planes.to(real_dtype), step=self.step, poles=self.poles)

    def bases(self, length: int, first: int = 0) -> Tensor:
        """lambda^(first + q C) for the Q chunks covering exponents 0..length-1: (Q, N, D) complex128."""
        return torch.stack([base for _, base in self.chunks(length, first)])

    def chunks(self, length: int, first: int = 0) -> Iterator[tuple[int, Tensor]]:
        """(start, lambda^(first + start)) (N, D) complex128 for the chunks covering exponents 0..length-1."""
        base = _integer_power(self.poles, first)
        for start in range(0, length, self.chunk):
            yield start, base
            base = base * self.step


def _integer_power(poles: Tensor, exponent: int) -> Tensor:
    """lambda^exponent by repeated squaring (exact for lambda = 0: 0^0 = 1)."""
    result = torch.ones_like(poles)
    square = poles
    while exponent:
        if exponent & 1:
            result = result * square
        square = square * square
        exponent >>= 1
    return result


def modal_kernel(params: ModalParams, length: int) -> Tensor:
    """The realised kernel K_k for k = 0..length-1: (length, D), computed in float64, cast to fir's dtype.

    Lag h + q C + j (a chunk q of C lags) is Re sum_n a_qn lambda_n^j with a_q = w lambda^(q C): one real
    contraction over 2N per channel of the pole power table (the prefill's, float64) with [Re a_q; -Im a_q]."""
    h = params.fir.shape[0]
    kernel = torch.zeros(length, params.fir.shape[1], dtype=torch.float64, device=params.fir.device)
    kernel[: min(h, length)] = params.fir[:length].to(torch.float64)
    count = max(0, length - h)
    if count == 0:
        return kernel.to(params.fir.dtype)
    table = params.power_table(torch.float64)
    scaled = params.weights.to(torch.complex128) * table.bases(count)  # (Q, N, D): w lambda^(q C)
    coefficients = torch.cat([scaled.real, -scaled.imag], dim=1).permute(2, 0, 1)  # (D, Q, 2N)
    lags = torch.bmm(coefficients, table.planes)  # (D, Q, C)
    kernel[h:] = lags.flatten(1)[:, :count].T
    return kernel.to(params.fir.dtype)


def modal_kernel_from_powers(params: ModalParams, lags: int | Tensor) -> Tensor:
    """Slow twin of `modal_kernel`: each lag's powers by exp((k - h) log lambda), (lags, N, D) complex128 at once.
    lags: a count (lags 0..lags-1, as `modal_kernel`) or the lags themselves ((L,) int). Returns (L, D) float64."""
    h = params.fir.shape[0]
    lags = torch.arange(lags) if isinstance(lags, int) else lags.cpu()
    kernel = torch.zeros(lags.shape[0], params.fir.shape[1], dtype=torch.float64)
    head = lags < h
    kernel[head] = params.fir.double().cpu()[lags[head]]
    exponents = (lags[~head] - h).to(torch.float64)[:, None, None]
    poles = params.poles.to(torch.complex128).cpu()
    safe = torch.where(poles == 0, torch.full_like(poles, 1e-300), poles)
    powers = torch.exp(exponents * torch.log(safe)[None])  # (L', N, D)
    powers[exponents[:, 0, 0] == 0] = 1.0
    kernel[~head] = (powers * params.weights.to(torch.complex128).cpu()[None]).sum(1).real
    return kernel


def modal_prefill(
    v: Tensor, modes: Tensor | None, history: Tensor | None, params: ModalParams
) -> tuple[Tensor, Tensor, Tensor]:
    """Outputs, final modes and final history for a block of L tokens, continuing from (modes, history).

    v: (B, L, D) real; modes: (B, N, D) complex or None (zero); history: (B, h, D) real, most recent first, or
    None (zero). Returns o (B, L, D) in v's dtype, modes (B, N, D) complex, history (B, h, D) real.
    With u the mode input sequence (the input delayed by h, the history first), the modes after L tokens are
    lambda^L S + w sum_r lambda^r u_{L-1-r}: one contraction of u with pole powers per chunk of lags.
    """
    batch, length, channels = v.shape
    h = params.fir.shape[0]
    real_dtype = params.fir.dtype
    complex_dtype = params.weights.dtype
    x = v.to(real_dtype)
    if history is None:
        history = x.new_zeros(batch, h, channels)
    extended = torch.cat([history.flip(1).to(real_dtype), x], dim=1)  # (B, h + L, D): oldest first
    o = toeplitz_matmul_fft(extended, params.kernel(h + length))[:, h:]  # (B, L, D)

    n = params.n_modes
    table = params.power_table()
    chunk, chunks = table.chunk, -(-length // table.chunk)
    # (D, C, Q B): position r of chunk q is u_{L-1-qC-r} (zero past the block), channels first for one batched
    # matmul with the power table over every chunk at once (the table is read once, not once per chunk)
    inputs = torch.nn.functional.pad(extended[:, :length].flip(1), (0, 0, 0, chunks * chunk - length))  # (B, QC, D)
    inputs = inputs.view(batch, chunks, chunk, channels).permute(3, 2, 1, 0).reshape(channels, chunk, -1)
    planes = torch.bmm(table.planes, inputs.to(table.dtype)).view(channels, 2 * n, chunks, batch)  # (D, 2N, Q, B)
    partial = torch.complex(planes[:, :n], planes[:, n:]).permute(2, 3, 1, 0)  # (Q, B, N, D)
    driven = (table.bases(length)[:, None] * partial).sum(0)  # (B, N, D): sum_q lambda^(qC) sum_r lambda^r u
    new_modes = params.weights * driven.to(complex_dtype)  # (B, N, D)

    if modes is not None:
        scaled = table.bases(length, first=1)[:, None] * modes.to(torch.complex128)  # (Q, B, N, D): lambda^(1+qC) S
        # Re sum_j W_j T_j = sum_j (W_re T_re - W_im T_im): one real contraction over 2N
        stacked = torch.cat([scaled.real, -scaled.imag], dim=2).permute(3, 2, 0, 1).to(table.dtype)  # (D, 2N, Q, B)
        carried = torch.bmm(table.planes.transpose(1, 2), stacked.reshape(channels, 2 * n, -1))  # (D, C, Q B)
        carried = carried.view(channels, chunk, chunks, batch).transpose(1, 2).reshape(channels, -1, batch)
        o = o + carried[:, :length].permute(2, 1, 0).to(o.dtype)  # + Re sum_j lambda_j^(i+1) S_j at position i
        new_modes = new_modes + _integer_power(params.poles, length).to(complex_dtype) * modes
    new_history = extended[:, length:].flip(1)  # (B, h, D): the last h inputs, most recent first
    return o.to(v.dtype), new_modes, new_history.contiguous()
