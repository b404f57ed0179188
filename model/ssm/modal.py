"""A diagonal SSM with arbitrary stable poles and an optional FIR head: the reduced-order recurrence.

Per channel the realised kernel is
    K_k = fir_k                                  for k < h  (an exact head: the first h lags)
    K_k = Re sum_j w_j lambda_j^(k - h)          for k >= h (N damped modes fed the input delayed by h)
so the modes never contribute to the head and the head never to the tail. A complex-conjugate pair is one
mode with its weight doubled (the real part of the sum is unchanged); a real pole has a real weight; unused
slots (channels needing fewer modes than the layer) have lambda = 0, w = 0. Every |lambda| < 1.

Step (tnn.model.ssm.step): S <- lambda S + w v_{t-h};  o_t = Re sum_j S_j + sum_{i<h} fir_i v_{t-i}.
Prefill here: the block form of the recurrence, continuing from a carried state and history. The block is cut
into chunks of C tokens; per chunk, per channel: the output from the chunk's own inputs (a Toeplitz product with
the realised kernel's first C + h lags), plus what the modes before the chunk add (pole powers times those
modes), and the modes the chunk leaves (pole powers times its inputs); the modes pass from chunk to chunk in L / C
steps. Every product is a batched GEMM over channels, in the state's real dtype, with tables built once per layer
in float64 (`ChunkTables`). No Python loop over positions, no FFT, no complex128 per call.

Shapes: B batch, L tokens, D channels, N modes, h FIR head length, C a chunk of lags.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

POWER_CHUNK_ELEMENTS = 1 << 20  # a chunk of pole powers (C, N, D) complex128 stays at 16 MB
MAX_POWER_CHUNK = 256  # lags per chunk at most
MAX_CACHED_KERNEL_LAGS = 4096  # each layer's realised kernel is kept up to this many lags (the fit, the checks)
PREFILL_CHUNKS = (16, 32)  # tokens per chunk of the prefill's block form: the smallest that holds a short
# block (its tables are read once per block), else the largest (fewer chunk-to-chunk steps); see `prefill_chunk`


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
        and sliced for shorter ones: the fit, the kernel check and past n ask for it, and K_k depends only on k.
        (length, D)."""
        cached = self.__dict__.get("_kernel")
        if cached is not None and cached.shape[0] >= length:
            return cached[:length]
        with torch.inference_mode(False):  # a normal tensor: usable later with autograd on, not only in serving
            kernel = modal_kernel(self, length)
        if length <= MAX_CACHED_KERNEL_LAGS:
            object.__setattr__(self, "_kernel", kernel)  # a cache, not a field (the dataclass is frozen)
        return kernel

    def power_table(self, real_dtype: torch.dtype | None = None) -> PowerTable:
        """The pole powers of one chunk of lags with planes in `real_dtype` (default fir's), kept per dtype
        (`modal_kernel` reads them in float64; they depend on the poles only). A second dtype casts the first's
        planes: both are the same complex128 powers rounded once."""
        real_dtype = real_dtype or self.fir.dtype
        tables: dict[torch.dtype, PowerTable] = self.__dict__.setdefault("_power_tables", {})  # a cache, not a field
        if real_dtype not in tables:
            with torch.inference_mode(False):
                known = next(iter(tables.values()), None)
                tables[real_dtype] = PowerTable.of(self.poles, real_dtype) if known is None else known.cast(real_dtype)
        return tables[real_dtype]

    def chunk_tables(self, chunk: int) -> ChunkTables:
        """The prefill's per-channel matrices for chunks of `chunk` tokens, kept per chunk size: every prefill
        needs them and they depend on the params only (built in float64 / complex128, stored in the real dtype)."""
        kept: dict[int, ChunkTables] = self.__dict__.setdefault("_chunk_tables", {})  # a cache, not a field
        if chunk not in kept:
            with torch.inference_mode(False):  # normal tensors: usable later with autograd on, not only in serving
                kept[chunk] = ChunkTables.of(self, chunk)
        return kept[chunk]

    def to(self, device: torch.device | str | None = None, real_dtype: torch.dtype | None = None) -> ModalParams:
        real_dtype = real_dtype or self.fir.dtype
        complex_dtype = torch.complex128 if real_dtype == torch.float64 else torch.complex64
        poles = self.poles.to(device=device, dtype=complex_dtype)
        weights = self.weights.to(device=device, dtype=complex_dtype)
        fir = self.fir.to(device=device, dtype=real_dtype)
        if poles is self.poles and weights is self.weights and fir is self.fir:
            return self  # already there: keep the kept kernel and tables
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
    """lambda^0 .. lambda^(C-1) of a layer's poles as real planes, channels first, for `modal_kernel`'s batched
    real matmuls: planes (D, 2N, C) = [Re; Im] in a real dtype (computed in complex128, then cast), and lambda^C
    (N, D) complex128 to step from one chunk to the next (each power exact up to the real dtype's rounding)."""

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


@dataclass(frozen=True)
class ChunkTables:
    """One chunk of C tokens of the recurrence as per-channel real matrices (the prefill's block form), built
    once per layer and chunk size from the realised kernel and the pole powers in float64 / complex128, then
    cast to the real dtype (each entry exact up to that dtype's rounding, 6e-8 relative in float32).

    A chunk's window is its C inputs with the h before them (oldest first), column c. `window` (D, C + h, C + 2N):
    - columns r < C: [c, r] = K[r + h - c] (0 where r + h < c): the window times them is the chunk's output r
      from the window's inputs alone (FIR head and modes);
    - columns C + j, C + N + j: [c] = Re, Im lambda_j^(C-1-c) for c < C (0 for the last h rows): the modes the
      chunk leaves from a zero start, before the weights (mode inputs are the input delayed by h).
    `decay_out` (D, 2N, C): rows [Re lambda^(r+1); Im lambda^(r+1)]: [Re S, -Im S] times it is what the modes S
    before a chunk add to its output r (Re sum_j lambda_j^(r+1) S_j)."""

    window: Tensor  # (D, C + h, C + 2N) real
    decay_out: Tensor  # (D, 2N, C) real
    poles: Tensor  # (N, D) complex128

    @property
    def chunk(self) -> int:
        return self.decay_out.shape[2]

    @staticmethod
    def of(params: ModalParams, chunk: int) -> ChunkTables:
        h = params.fir.shape[0]
        wide = ModalParams(params.poles.to(torch.complex128), params.weights.to(torch.complex128), params.fir.double())
        kernel = modal_kernel(wide, chunk + h)  # (C + h, D) float64
        device = kernel.device
        lag = torch.arange(chunk, device=device)[None, :] + h - torch.arange(chunk + h, device=device)[:, None]
        toeplitz = torch.where(lag >= 0, kernel[lag.clamp(min=0)].permute(2, 0, 1), 0.0)  # (D, C + h, C)
        steps = torch.cat([torch.ones_like(wide.poles)[None], wide.poles.expand(chunk, *wide.poles.shape)])
        powers = torch.cumprod(steps, dim=0)  # (C + 1, N, D): lambda^0 .. lambda^C
        within = powers[:chunk].flip(0)  # lambda^(C-1-c)
        driven = torch.cat([within.real, within.imag], dim=1).permute(2, 0, 1)  # (D, C, 2N)
        driven = torch.cat([driven, driven.new_zeros(driven.shape[0], h, driven.shape[2])], dim=1)  # (D, C + h, 2N)
        after = powers[1:]  # lambda^(r+1)
        real_dtype = params.fir.dtype
        return ChunkTables(
            window=torch.cat([toeplitz, driven], dim=2).to(real_dtype).contiguous(),
            decay_out=torch.cat([after.real, after.imag], dim=1).permute(2, 1, 0).to(real_dtype).contiguous(),
            poles=wide.poles,
        )


def prefill_chunk(length: int) -> int:
    """The chunk size for a block of `length` tokens: the smallest of PREFILL_CHUNKS that holds it, else the largest."""
    return next((chunk for chunk in PREFILL_CHUNKS if chunk >= length), PREFILL_CHUNKS[-1])


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
    The block form of the recurrence (`ChunkTables`), zeros in front so every chunk of C tokens is full: per chunk
    its output from its own window of inputs and the modes it leaves (one batched GEMM over channels, K x B rows),
    then the modes passed from chunk to chunk (K steps of S <- lambda^C S + the chunk's own) and what they add to
    the next chunk's outputs (a second batched GEMM).
    """
    batch, length, channels = v.shape
    h, n = params.fir.shape[0], params.n_modes
    x = v.to(params.fir.dtype)
    tables = params.chunk_tables(prefill_chunk(length))
    chunk = tables.chunk  # C
    count = -(-length // chunk)  # K chunks
    pad = count * chunk - length  # P zeros before the history: every chunk full, the last one ends the block
    padded = x.new_zeros(batch, pad + h + length, channels)
    if history is not None:
        padded[:, pad : pad + h] = history.flip(1)  # oldest first
    padded[:, pad + h :] = x
    # (D, K B, C + h): chunk k's window, channels first for one batched GEMM over channels
    windows = padded.unfold(1, chunk + h, chunk).permute(2, 1, 0, 3).contiguous().view(channels, -1, chunk + h)
    both = torch.bmm(windows, tables.window)  # (D, K B, C + 2N)
    out = both[:, :, :chunk].view(channels, count, batch, chunk)  # (D, K, B, C): from each chunk's inputs alone
    driven = both[:, :, chunk:].view(channels, count, batch, 2 * n).permute(1, 2, 3, 0)  # (K, B, 2N, D)
    driven = params.weights * torch.complex(driven[:, :, :n], driven[:, :, n:]).to(params.weights.dtype)

    # the modes after each chunk: K steps of S <- lambda^C S + the chunk's own (the zeros in front add nothing)
    after = [driven[0]]
    if modes is not None:  # they enter at the first real token, C - P tokens before the end of chunk 0
        after[0] = after[0] + _integer_power(tables.poles, chunk - pad).to(modes.dtype) * modes
        out[:, 0, :, pad:] += torch.bmm(_mode_planes(modes[None], x.dtype), tables.decay_out[:, :, : chunk - pad])
    step = _integer_power(tables.poles, chunk).to(params.weights.dtype)  # lambda^C
    for k in range(1, count):
        after.append(step * after[-1] + driven[k])
    if count > 1:  # what the modes before chunks 1 .. K-1 add to their outputs
        planes = _mode_planes(torch.stack(after[:-1]), x.dtype)  # (D, (K-1) B, 2N)
        out[:, 1:] += torch.bmm(planes, tables.decay_out).view(channels, count - 1, batch, chunk)

    o = out.permute(2, 1, 3, 0).reshape(batch, count * chunk, channels)[:, pad:]  # (B, L, D)
    new_history = padded[:, pad + length :].flip(1)  # (B, h, D): the last h inputs, most recent first
    return o.to(v.dtype), after[-1], new_history.contiguous()


def _mode_planes(modes: Tensor, dtype: torch.dtype) -> Tensor:
    """Modes (K, B, N, D) complex -> (D, K B, 2N) [Re S, -Im S]: Re sum_j a_j S_j = sum over 2N of a's planes times it."""
    planes = torch.cat([modes.real, -modes.imag], dim=2).to(dtype)  # (K, B, 2N, D)
    # contiguous: with one row a reshape is a view whose matrices have no unit stride (bmm would copy each one)
    return planes.permute(3, 0, 1, 2).reshape(planes.shape[3], -1, planes.shape[2]).contiguous()
