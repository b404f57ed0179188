"""Reduced-order conversion: each channel's realised TNN kernel as an exact FIR head plus a few damped modes.

The parallel model defines the kernel a_k (decayed, activated Toeplitz coefficient) at every lag, so the fit
targets lags 0..K-1 with K a few times the conversion length n: decoding past n then tracks the TNN instead
of a periodic copy. Per channel, in float64:
1. the first h lags are kept exactly as FIR taps (kernels are spiky near lag 0 and smooth after);
2. poles by Kung's method (ESPRIT): the left singular vectors U of the Hankel matrix of y_k = a_{h+k} (from the
   SVD of the small triangle of its QR) are shift-invariant, U[1:] = U[:-1] F, and the eigenvalues of F
   (order r) are the poles. Poles with |lambda| > the channel's cap are pulled back onto it (never unstable);
3. residues by real least squares over the lags up to where every channel is negligible (normal equations, unit-norm columns): a conjugate pair
   contributes Re(w lambda^k) with w = alpha + i beta, spanned by the columns Re lambda^k and Im conj(lambda)^k;
   a real pole by lambda^k;
4. the order r grows from 1 (then in steps of 2) to `max_order` until max_k |K_k - a_k| <= tolerance * max_k |a_k|. A channel
   that never gets there keeps the order with the lowest error (`missed`): the layer stays at most
   `max_order` slots wide. Only with `etsc_fallback` does it take its exact ETSC modes instead, which widens
   its whole layer to the ETSC mode count (n/2 + 1: ten times the state for one hard channel).
A layer's state holds N = the most slots any of its channels needs (a pair or a real pole is one slot;
channels with fewer are padded with lambda = 0, w = 0). No iterative refinement: on the shipped model the Kung
poles with least-squares residues reach the fidelity targets (docs/fidelity.md).

Shapes: K fit lags, D channels, r model order (real unknowns), N slots, h FIR head, M Hankel rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tnn.model.ssm.etsc import SsmParams
from tnn.model.ssm.modal import ModalParams, UnstablePole

# chosen by fidelity on held-out text (docs/fidelity.md, benchmarks/fidelity.py), not by kernel error
DEFAULT_TOLERANCE = 1e-3
DEFAULT_MAX_ORDER = 24
DEFAULT_FIR_LENGTH = 8
FIT_MULTIPLE = 4  # fit lags 0 .. FIT_MULTIPLE * n - 1
MAX_RADIUS = 1.0 - 1e-6  # strictly inside the unit circle, representable in float32
HANKEL_COLUMNS = 256  # column offsets of the Hankel matrix (a subset spans the same signal space)
CHANNEL_BLOCK = 64  # channels fitted together: the (block, K, r) basis stays small
# the closed-form Gram matrix loses ~eps / |1 - z| to cancellation: with some |lambda|^2 within this of 1 the fit
# builds the basis instead (a pole cap near 1, e.g. a kernel without decay)
CLOSED_FORM_MARGIN = 1e-3
NEGLIGIBLE = 1e-2  # lags where every channel is below NEGLIGIBLE * tolerance (relative) are left out of the fit


@dataclass(frozen=True)
class ReducedFit:
    """One layer's fit and how good it is."""

    params: ModalParams  # float64/complex128
    orders: Tensor  # (D,) int64: model order per channel (real unknowns); 0 for a fallback channel
    missed: Tensor  # (D,) bool: channels whose best fit within max_order misses the tolerance
    fallback: Tensor  # (D,) bool: missed channels that kept their exact ETSC modes (only with etsc_fallback)
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
    such channels keep their best fit. Raises UnstablePole if a fallback channel's exact modes do not decay.
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
    missed = torch.zeros(channels, dtype=torch.bool)
    cap = torch.full((channels,), MAX_RADIUS, dtype=torch.float64)
    if max_radius is not None:
        cap = torch.minimum(cap, max_radius.to(device="cpu", dtype=torch.float64))
    fitted_lags = tail[:, : _fit_count(tail, tolerance, 2 * (2 * max_order + 1))]  # (D, K'')
    for start in range(0, channels, CHANNEL_BLOCK):
        block = slice(start, start + CHANNEL_BLOCK)
        fitted = (poles[block], residues[block], orders[block], missed[block])
        _fit_block(fitted_lags[block], tolerance, max_order, cap[block], *fitted)

    fallback = missed if etsc_fallback is not None else torch.zeros_like(missed)
    orders[fallback] = 0
    slot_poles, slot_weights = _slots(poles, residues, orders)  # (N, D) complex, in units of `scale`
    slot_weights = slot_weights * scale[None, :]
    fir = kernel[:fir_length].clone()  # (h, D)
    if etsc_fallback is not None and bool(fallback.any()):
        slot_poles, slot_weights = _with_fallback(slot_poles, slot_weights, fallback, etsc_fallback(), fir_length)
    params = ModalParams(poles=slot_poles, weights=slot_weights, fir=fir)
    realised = params.kernel(lags)  # (K, D), kept: the kernel check and past n use it again
    error = (realised - kernel).abs() / scale  # (K, D)
    return ReducedFit(
        params=params,
        orders=orders,
        missed=missed,
        fallback=fallback,
        error_inside=error[: length + 1].amax(0),
        error_past=error[length + 1 :].amax(0) if lags > length + 1 else torch.zeros(channels, dtype=torch.float64),
    )


def _fit_count(tail: Tensor, tolerance: float, least: int) -> int:
    """Lags the poles and residues are fitted on: up to the last lag where some channel's |y_k| (normalised)
    exceeds NEGLIGIBLE * tolerance, at least `least`. Past it the kernel is far below the tolerance and the
    fitted modes decay (|lambda| <= the cap); the reported errors still cover every lag. tail: (D, K')."""
    above = (tail.abs() > NEGLIGIBLE * tolerance).any(0).nonzero()  # (k, 1)
    last = int(above.max()) + 1 if above.numel() else 0
    return min(tail.shape[1], max(least, last))


def _fit_block(
    tail: Tensor,
    tolerance: float,
    max_order: int,
    cap: Tensor,
    poles: Tensor,
    residues: Tensor,
    orders: Tensor,
    missed: Tensor,
) -> None:
    """Fit the channels of `tail` (c, K') in place into poles/residues (c, r), orders (c,): the smallest order
    that meets the tolerance, else the order with the lowest error (and `missed` (c,) set)."""
    channels, count = tail.shape
    rows = 2 * max_order + 1
    offsets = torch.linspace(0, count - rows, min(count - rows + 1, HANKEL_COLUMNS)).round().long().unique()
    hankel = tail.unfold(1, rows, 1)[:, offsets]  # (c, C, M): H^T, column offsets by Hankel rows
    # left singular vectors of the Hankel matrix H = R^T Q^T (QR of the tall H^T): those of the small (M, M) R^T
    triangle = torch.linalg.qr(hankel, mode="r")[1]  # (c, M, M)
    left, _, _ = torch.linalg.svd(triangle.transpose(1, 2))  # (c, M, M)
    pending = torch.arange(channels)
    best = torch.full((channels,), torch.inf, dtype=torch.float64)  # (c,) lowest error so far
    for order in _orders(max_order):
        basis_vectors = left[pending, :, :order]  # (p, M, r)
        shift = torch.linalg.lstsq(basis_vectors[:, :-1], basis_vectors[:, 1:]).solution  # (p, r, r)
        candidate = torch.linalg.eigvals(shift)  # (p, r)
        radius = candidate.abs()
        limit = cap[pending, None]  # (p, 1)
        candidate = torch.where(radius > limit, candidate * (limit / radius), candidate)
        coefficients, error = fit_residues(candidate, tail[pending])  # (p, r), (p,)
        better = error < best[pending]  # a channel that never meets the tolerance keeps its best order
        kept = pending[better]
        best[kept] = error[better]
        poles[kept] = 0
        residues[kept] = 0
        poles[kept, :order] = candidate[better]
        residues[kept, :order] = coefficients[better]
        orders[kept] = order
        pending = pending[error > tolerance]
        if pending.numel() == 0:
            break
    missed[:] = best > tolerance


def _orders(max_order: int) -> list[int]:
    """Model orders tried, smallest first: 1 (one real pole), then even orders (conjugate pairs). An odd order
    2m + 1 needs a real pole, so m + 1 slots: the same state as order 2m + 2, which fits at least as well."""
    return sorted({1, max_order, *range(2, max_order + 1, 2)})


def fit_residues(poles: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Real least-squares coefficients of the basis columns of `poles` (`real_basis`) for `target`, and the max
    |fit - target| per channel. poles: (p, r) complex, target: (p, K') -> (p, r), (p,).

    The basis is never built: with lag k = q B + b, the normal equations' right side sum_k y_k Re(eps lambda^k) and
    the fitted sequence are two batched matmuls with a table of lambda^b (B ~ sqrt K' lags), and the Gram matrix is
    closed-form geometric sums, exact to ~eps / |1 - z| for z = lambda_i lambda_j. Where some |z| is within
    CLOSED_FORM_MARGIN of 1 (poles near the unit circle), `fit_residues_explicit` (the basis built lag by lag)
    does it instead."""
    if bool((poles.abs().amax(1) ** 2 > 1 - CLOSED_FORM_MARGIN).any()):
        return fit_residues_explicit(poles, target)
    channels, count = target.shape
    order = poles.shape[1]
    block = max(1, math.isqrt(count))
    chunks = -(-count // block)
    within = _power_table(poles, block)  # (p, B, r): lambda^b
    across = _power_table(within[:, -1] * poles, chunks)  # (p, Q, r): lambda^(q B)
    # column j of the basis: Re(eps_j lambda_j^k), eps = 1 (Im lambda >= 0) or -i (Im lambda < 0: Im lambda^k)
    eps = torch.where(poles.imag < 0, -1j, 1.0 + 0j).to(poles.dtype)  # (p, r)
    table = torch.cat([within.real, within.imag], dim=2)  # (p, B, 2r)
    blocks = torch.nn.functional.pad(target, (0, chunks * block - count)).view(channels, chunks, block)  # (p, Q, B)
    inner = torch.bmm(blocks, table)  # (p, Q, 2r): sum_b y_(qB+b) lambda^b, real and imaginary parts
    transform = (across * torch.complex(inner[:, :, :order], inner[:, :, order:])).sum(1)  # (p, r): sum_k y_k lambda^k
    rhs = (eps * transform).real  # (p, r)
    gram = _closed_form_gram(poles, eps, across[:, -1] * within[:, count - (chunks - 1) * block - 1] * poles, count)
    coefficients = _solve_normal_equations(gram, rhs)  # (p, r)
    # fitted_(qB+b) = Re sum_j a_qj lambda_j^b with a_q = c eps lambda^(qB): Re(a w) = a_re w_re - a_im w_im
    scaled = coefficients * eps  # (p, r)
    weights = scaled[:, None, :] * across  # (p, Q, r)
    fitted = torch.bmm(torch.cat([weights.real, -weights.imag], dim=2), table.transpose(1, 2))  # (p, Q, B)
    error = (fitted.flatten(1)[:, :count] - target).abs().amax(1)  # (p,)
    return coefficients, error


def fit_residues_explicit(poles: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Slow twin of `fit_residues`: the basis (p, K', r) built lag by lag (`real_basis`), the Gram matrix and the
    right side as its products. The same normal equations, so the same coefficients to round-off."""
    basis = real_basis(poles, target.shape[1])  # (p, K', r)
    gram = basis.transpose(1, 2) @ basis  # (p, r, r)
    rhs = (basis.transpose(1, 2) @ target[:, :, None])[:, :, 0]  # (p, r)
    coefficients = _solve_normal_equations(gram, rhs)
    error = (torch.bmm(basis, coefficients[:, :, None])[:, :, 0] - target).abs().amax(1)  # (p,)
    return coefficients, error


def _closed_form_gram(poles: Tensor, eps: Tensor, last: Tensor, count: int) -> Tensor:
    """G_ij = sum_(k<K) Re(eps_i lambda_i^k) Re(eps_j lambda_j^k) = Re[eps_i eps_j S(lambda_i lambda_j)
    + eps_i conj(eps_j) S(lambda_i conj(lambda_j))] / 2 with S(z) = (1 - z^K) / (1 - z). last: lambda^K (p, r).
    (p, r) -> (p, r, r) float64."""
    z_same = poles[:, :, None] * poles[:, None, :]  # (p, r, r)
    z_conj = poles[:, :, None] * poles[:, None, :].conj()
    sum_same = (1 - last[:, :, None] * last[:, None, :]) / (1 - z_same)
    sum_conj = (1 - last[:, :, None] * last[:, None, :].conj()) / (1 - z_conj)
    first = eps[:, :, None] * eps[:, None, :] * sum_same
    second = eps[:, :, None] * eps[:, None, :].conj() * sum_conj
    return (first + second).real / 2


def _solve_normal_equations(gram: Tensor, rhs: Tensor) -> Tensor:
    """argmin_c ||basis c - target|| from its normal equations gram c = rhs, with the columns scaled to unit norm
    (the norms from the Gram diagonal). gram (p, r, r), rhs (p, r) -> (p, r)."""
    norms = gram.diagonal(dim1=1, dim2=2).sqrt().clamp_min(1e-300)  # (p, r): column norms
    scaled = gram / (norms[:, :, None] * norms[:, None, :])
    return torch.linalg.lstsq(scaled, (rhs / norms)[:, :, None]).solution[:, :, 0] / norms


def real_basis(poles: Tensor, count: int) -> Tensor:
    """Columns Re lambda^k (Im lambda >= 0) or Im lambda^k (Im lambda < 0, the conjugate's second column) for
    k = 0..count-1, lambda^k = lambda^(q B) lambda^j with k = q B + j: two short cumulative products and one
    broadcast product taken in real arithmetic, only the part each column needs (exact lambda^0 = 1, also for
    lambda = 0). poles: (p, r) complex -> (p, K', r) float64."""
    block = max(1, math.isqrt(count))
    within = _power_table(poles, block)  # (p, B, r): lambda^j
    across = _power_table(within[:, -1] * poles, -(-count // block))  # (p, Q, r): lambda^(q B)
    imaginary = poles.imag[:, None, :] < 0  # (p, 1, r)
    # Re(a c) = a_re c_re - a_im c_im, Im(a c) = a_re c_im + a_im c_re with a = lambda^(q B), c = lambda^j
    first = torch.where(imaginary, within.imag, within.real)[:, None]  # (p, 1, B, r)
    second = torch.where(imaginary, within.real, -within.imag)[:, None]
    basis = across.real[:, :, None] * first  # (p, Q, B, r)
    basis.addcmul_(across.imag[:, :, None], second)
    return basis.flatten(1, 2)[:, :count]


def _power_table(poles: Tensor, count: int) -> Tensor:
    """lambda^0 .. lambda^(count-1) along dim 1: (p, r) -> (p, count, r)."""
    steps = poles[:, None, :].repeat(1, count, 1)
    steps[:, 0] = 1.0
    return torch.cumprod(steps, dim=1)


def _slots(poles: Tensor, residues: Tensor, orders: Tensor) -> tuple[Tensor, Tensor]:
    """Per channel: one slot per real pole (w = alpha) and per conjugate pair (the upper pole, w = alpha + i beta,
    beta the coefficient of the lower pole nearest its conjugate), slots by decreasing |lambda| (ties in pole
    order). poles, residues: (D, r) -> slot poles and weights (N, D) complex128, N the most slots of any channel."""
    channels, width = poles.shape
    used = torch.arange(width)[None, :] < orders[:, None]  # (D, r)
    upper = used & (poles.imag > 0)
    lower = used & (poles.imag < 0)
    real = used & (poles.imag == 0)
    distance = (poles[:, None, :] - poles.conj()[:, :, None]).abs()  # (D, r, r): |lambda_i - conj(lambda_j)|
    partner = distance.masked_fill(~lower[:, None, :], torch.inf).argmin(2)  # (D, r): nearest lower pole
    beta = torch.where(upper, residues.gather(1, partner), 0.0)  # (D, r)
    kept = upper | real
    slot_poles = torch.where(real, torch.complex(poles.real, torch.zeros_like(poles.real)), poles)
    slot_weights = torch.complex(residues, beta)
    rank = torch.where(kept, -slot_poles.abs(), torch.inf)  # (D, r): dropped (lower, unused) poles last
    order = torch.sort(rank, dim=1, stable=True).indices
    n_slots = max(1, int(kept.sum(1).max()) if channels else 1)
    keep = kept.gather(1, order)[:, :n_slots]  # (D, N)
    slot_poles = torch.where(keep, slot_poles.gather(1, order)[:, :n_slots], 0)
    slot_weights = torch.where(keep, slot_weights.gather(1, order)[:, :n_slots], 0)
    return slot_poles.T.contiguous(), slot_weights.T.contiguous()  # (N, D)


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
