"""Reduced-order conversion: each channel's realised TNN kernel as an exact FIR head plus a few damped modes.

The parallel model defines the kernel a_k (decayed, activated Toeplitz coefficient) at every lag, so the fit
targets lags 0..K-1 with K a few times the conversion length n: decoding past n then tracks the TNN instead
of a periodic copy. Per channel, in float64:
1. the first h lags are kept exactly as FIR taps (kernels are spiky near lag 0 and smooth after);
2. poles by Kung's method (ESPRIT): the left singular vectors U of the Hankel matrix of y_k = a_{h+k} are
   shift-invariant, U[1:] = U[:-1] F, and the eigenvalues of F (order r) are the poles. Poles with
   |lambda| > MAX_RADIUS are pulled back onto that radius (never an unstable pole);
3. residues by real least squares over every lag: a conjugate pair contributes Re(w lambda^k) with w = alpha +
   i beta, spanned by the columns Re lambda^k and Im conj(lambda)^k; a real pole by lambda^k;
4. the order r grows from 1 to `max_order` until max_k |K_k - a_k| <= tolerance * max_k |a_k|. A channel
   that never gets there falls back to its exact ETSC modes (etsc-tail), counted in the result.
A layer's state holds N = the most slots any of its channels needs (a pair or a real pole is one slot;
channels with fewer are padded with lambda = 0, w = 0), so one fallback channel costs the whole layer.
No iterative refinement: the Kung poles with least-squares residues meet the tolerances in practice.

Shapes: K fit lags, D channels, r model order (real unknowns), N slots, h FIR head, M Hankel rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tnn.model.ssm.etsc import SsmParams
from tnn.model.ssm.modal import ModalParams, UnstablePole, modal_kernel

DEFAULT_TOLERANCE = 2e-2
DEFAULT_MAX_ORDER = 16
DEFAULT_FIR_LENGTH = 8
FIT_MULTIPLE = 4  # fit lags 0 .. FIT_MULTIPLE * n - 1
MAX_RADIUS = 1.0 - 1e-6  # strictly inside the unit circle, representable in float32
HANKEL_COLUMNS = 512  # column offsets of the Hankel matrix (a subset spans the same signal space)
CHANNEL_BLOCK = 64  # channels fitted together: the (block, K, r) basis stays small


@dataclass(frozen=True)
class ReducedFit:
    """One layer's fit and how good it is."""

    params: ModalParams  # float64/complex128
    orders: Tensor  # (D,) int64: model order per channel (real unknowns); 0 for a fallback channel
    fallback: Tensor  # (D,) bool: channels that kept their exact ETSC modes
    error_inside: Tensor  # (D,) max |K_k - a_k| / max |a| over lags 0..n
    error_past: Tensor  # (D,) the same over lags n+1..K-1

    @property
    def n_modes(self) -> int:
        return self.params.n_modes


def fit_reduced(
    kernel: Tensor,
    *,
    length: int,
    tolerance: float = DEFAULT_TOLERANCE,
    max_order: int = DEFAULT_MAX_ORDER,
    fir_length: int = DEFAULT_FIR_LENGTH,
    etsc_fallback: Callable[[], SsmParams] | None = None,
    max_radius: Tensor | None = None,
) -> ReducedFit:
    """Fit a layer's realised kernel `kernel` (K, D), lags 0..K-1, with `length` = n the conversion length.

    max_radius: (D,) cap on |lambda| per channel, e.g. the TNN's decay gamma (a_k = gamma^k RPE(k) with a
    bounded RPE decays at least that fast, so faster-growing poles are fitting noise); always <= MAX_RADIUS.

    etsc_fallback: the layer's exact ETSC params, built only if some channel misses the tolerance; without it
    such channels raise ValueError. Raises UnstablePole if a fallback channel's exact modes do not decay.
    """
    kernel = kernel.to(device="cpu", dtype=torch.float64)
    lags, channels = kernel.shape
    if not 0 <= fir_length < lags - 2 * max_order - 1:
        raise ValueError(f"fir_length {fir_length} leaves too few of {lags} lags for {max_order} modes")
    if max_order < 1 or not tolerance > 0:
        raise ValueError(f"need max_order >= 1 and tolerance > 0, got {max_order}, {tolerance}")
    if not bool(torch.isfinite(kernel).all()):
        raise ValueError("the kernel has non-finite values")
    scale = kernel.abs().amax(0).clamp_min(torch.finfo(torch.float64).tiny)  # (D,)
    tail = kernel[fir_length:].T / scale[:, None]  # (D, K'): normalised y_k = a_{h+k}

    poles = torch.zeros(channels, max_order, dtype=torch.complex128)  # (D, r) accepted poles, zero-padded
    residues = torch.zeros(channels, max_order, dtype=torch.float64)  # (D, r) real least-squares coefficients
    orders = torch.zeros(channels, dtype=torch.long)
    cap = torch.full((channels,), MAX_RADIUS, dtype=torch.float64)
    if max_radius is not None:
        cap = torch.minimum(cap, max_radius.to(device="cpu", dtype=torch.float64))
    for start in range(0, channels, CHANNEL_BLOCK):
        block = slice(start, start + CHANNEL_BLOCK)
        _fit_block(tail[block], tolerance, max_order, cap[block], poles[block], residues[block], orders[block])

    fallback = orders == 0
    slot_poles, slot_weights = _slots(poles, residues, orders)  # (N, D) complex, in units of `scale`
    slot_weights = slot_weights * scale[None, :]
    fir = kernel[:fir_length].clone()  # (h, D)
    if bool(fallback.any()):
        if etsc_fallback is None:
            raise ValueError(
                f"{int(fallback.sum())} channel(s) miss the tolerance {tolerance:g} with {max_order} modes "
                "and no ETSC fallback was given"
            )
        slot_poles, slot_weights = _with_fallback(slot_poles, slot_weights, fallback, etsc_fallback(), fir_length)
    params = ModalParams(poles=slot_poles, weights=slot_weights, fir=fir)
    realised = modal_kernel(params, lags)  # (K, D)
    error = (realised - kernel).abs() / scale  # (K, D)
    return ReducedFit(
        params=params,
        orders=orders,
        fallback=fallback,
        error_inside=error[: length + 1].amax(0),
        error_past=error[length + 1 :].amax(0) if lags > length + 1 else torch.zeros(channels, dtype=torch.float64),
    )


def _fit_block(
    tail: Tensor, tolerance: float, max_order: int, cap: Tensor, poles: Tensor, residues: Tensor, orders: Tensor
) -> None:
    """Fit the channels of `tail` (c, K') in place into poles/residues (c, r), orders (c,): smallest order first."""
    channels, count = tail.shape
    rows = 2 * max_order + 1
    offsets = torch.linspace(0, count - rows, min(count - rows + 1, HANKEL_COLUMNS)).round().long().unique()
    hankel = tail[:, offsets[None, :] + torch.arange(rows)[:, None]]  # (c, M, C)
    left, _, _ = torch.linalg.svd(hankel, full_matrices=False)  # (c, M, M)
    lag = torch.arange(count, dtype=torch.float64)[None, :, None]  # (1, K', 1)
    pending = torch.arange(channels)
    for order in range(1, max_order + 1):
        basis_vectors = left[pending, :, :order]  # (p, M, r)
        shift = torch.linalg.lstsq(basis_vectors[:, :-1], basis_vectors[:, 1:]).solution  # (p, r, r)
        candidate = torch.linalg.eigvals(shift)  # (p, r)
        radius = candidate.abs()
        limit = cap[pending, None]  # (p, 1)
        candidate = torch.where(radius > limit, candidate * (limit / radius), candidate)
        basis = _real_basis(candidate, lag)  # (p, K', r)
        target = tail[pending]  # (p, K')
        coefficients = torch.linalg.lstsq(basis, target[:, :, None]).solution[:, :, 0]  # (p, r)
        error = (torch.einsum("pkr,pr->pk", basis, coefficients) - target).abs().amax(1)  # (p,)
        done = error <= tolerance
        accepted = pending[done]
        poles[accepted, :order] = candidate[done]
        residues[accepted, :order] = coefficients[done]
        orders[accepted] = order
        pending = pending[~done]
        if pending.numel() == 0:
            return


def _real_basis(poles: Tensor, lag: Tensor) -> Tensor:
    """Columns Re lambda^k (Im lambda >= 0) or Im lambda^k (Im lambda < 0, the conjugate's second column).
    poles: (p, r) complex, lag: (1, K', 1) -> (p, K', r) float64."""
    magnitude = torch.exp(lag * torch.log(poles.abs().clamp_min(1e-300))[:, None, :])  # (p, K', r)
    magnitude[:, 0] = 1.0  # lambda^0 = 1, also for lambda = 0
    angle = lag * torch.angle(poles)[:, None, :]
    return torch.where(poles.imag[:, None, :] >= 0, magnitude * torch.cos(angle), magnitude * torch.sin(angle))


def _slots(poles: Tensor, residues: Tensor, orders: Tensor) -> tuple[Tensor, Tensor]:
    """Per channel: one slot per real pole (w = alpha) and per conjugate pair (the upper pole, w = alpha + i beta).
    poles, residues: (D, r) -> slot poles and weights (N, D) complex128, N the most slots of any channel."""
    channels = poles.shape[0]
    per_channel: list[list[tuple[complex, complex]]] = []
    for c in range(channels):
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
    slot_poles = torch.zeros(n_slots, channels, dtype=torch.complex128)
    slot_weights = torch.zeros(n_slots, channels, dtype=torch.complex128)
    for c, slots in enumerate(per_channel):
        if slots:
            slot_poles[: len(slots), c] = torch.tensor([p for p, _ in slots], dtype=torch.complex128)
            slot_weights[: len(slots), c] = torch.tensor([w for _, w in slots], dtype=torch.complex128)
    return slot_poles, slot_weights


def _with_fallback(
    poles: Tensor, weights: Tensor, fallback: Tensor, exact: SsmParams, fir_length: int
) -> tuple[Tensor, Tensor]:
    """Give the `fallback` channels their exact ETSC modes, delayed by the FIR head (w = b lambda^h: the head
    holds lags 0..h-1 exactly, the modes every later lag). The layer widens to max(N, ETSC modes)."""
    etsc_poles = exact.poles.to(torch.complex128)[:, fallback]  # (N_e, F)
    radius = etsc_poles.abs()
    if bool((radius >= 1).any()):
        raise UnstablePole(
            f"{int(fallback.sum())} channel(s) miss the tolerance and their exact ETSC modes do not decay "
            f"(|lambda| up to {radius.max().item():.9g}): a kernel without decay has no stable recurrent form"
        )
    etsc_weights = exact.weights.to(torch.complex128)[:, fallback] * etsc_poles**fir_length
    n_slots = max(poles.shape[0], etsc_poles.shape[0])
    padded_poles = torch.zeros(n_slots, poles.shape[1], dtype=torch.complex128)
    padded_weights = torch.zeros_like(padded_poles)
    padded_poles[: poles.shape[0]] = poles
    padded_weights[: weights.shape[0]] = weights
    padded_poles[:, fallback] = 0
    padded_weights[:, fallback] = 0
    padded_poles[: etsc_poles.shape[0], fallback] = etsc_poles
    padded_weights[: etsc_weights.shape[0], fallback] = etsc_weights
    return padded_poles, padded_weights
