"""Toeplitz matrix-vector products per channel: the FFT fast path and its dense O(L^2) oracle.

T[i, j] = a[i - j] for each channel. Lags 0..L-1 come from `coef_pos` (L, D); for a bidirectional operator
lags -1..-(L-1) come from `coef_neg` (L-1, D), in that order. Inputs are (B, L, D): sequence on dim 1.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fft_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype FFTs run in: float32 or wider, whatever the weights are (bf16/fp16 FFTs lose lags)."""
    return torch.promote_types(dtype, torch.float32)


def fft_length(minimum: int) -> int:
    """The smallest 2^a 3^b 5^c >= minimum: pocketfft is fast on such lengths and slow on large prime factors
    (2L for L = 1808 is 2^5 x 113, and its FFT took 13x the time of 3,600's)."""
    best = 1 << max(0, minimum - 1).bit_length()  # a power of two always qualifies
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35
            while candidate < minimum:
                candidate *= 2
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def toeplitz_matmul_fft(x: Tensor, coef_pos: Tensor, coef_neg: Tensor | None = None) -> Tensor:
    """y[b, i, c] = sum_j a_c[i - j] x[b, j, c] by a zero-padded FFT of length 2L (linear, not circular).

    x: (B, L, D); coef_pos: (L, D) lags 0..L-1; coef_neg: (L-1, D) lags -1..-(L-1), None for causal.
    Returns (B, L, D) in x's dtype; the FFT itself runs in float32 or wider.
    """
    length = x.shape[1]
    dt = fft_dtype(x.dtype)
    n_fft = fft_length(2 * length - 1)  # no wrap-around of the linear convolution
    if coef_neg is None:
        kernel = coef_pos.to(dt)  # (L, D); zero-padded to n_fft by rfft
    else:
        zeros = coef_pos.new_zeros(n_fft - 2 * length + 1, coef_pos.shape[1])
        # circular layout of length n_fft: [a_0 .. a_{L-1}, 0 .. 0, a_{-(L-1)} .. a_{-1}]
        kernel = torch.cat([coef_pos, zeros, coef_neg.flip(0)], dim=0).to(dt)  # (n_fft, D)
    # along the last, contiguous axis: pocketfft's strided path (along dim 1 of (B, L, D)) is 4-5x slower
    x_f = torch.fft.rfft(x.to(dt).transpose(1, 2).contiguous(), n=n_fft)  # (B, D, n_fft/2+1) complex
    k_f = torch.fft.rfft(kernel.T.contiguous(), n=n_fft)  # (D, n_fft/2+1) complex
    y = torch.fft.irfft(x_f * k_f, n=n_fft)[..., :length]  # (B, D, n_fft) -> (B, D, L)
    return y.transpose(1, 2).contiguous().to(x.dtype)  # (B, L, D)


def toeplitz_dense(coef_pos: Tensor, coef_neg: Tensor | None = None) -> Tensor:
    """The explicit matrices T (D, L, L) with T[c, i, j] = a_c[i - j] (zero above the diagonal if causal)."""
    length, channels = coef_pos.shape
    lags = torch.arange(length)[:, None] - torch.arange(length)[None, :]  # (L, L): i - j
    dense = coef_pos.new_zeros(channels, length, length)
    lower = lags >= 0
    dense[:, lower] = coef_pos[lags[lower]].T
    if coef_neg is not None:
        upper = lags < 0
        dense[:, upper] = coef_neg[-lags[upper] - 1].T
    return dense


def toeplitz_matmul_dense(x: Tensor, coef_pos: Tensor, coef_neg: Tensor | None = None) -> Tensor:
    """Oracle for `toeplitz_matmul_fft`: builds T explicitly, O(L^2 D). Use in float64 for tests."""
    dense = toeplitz_dense(coef_pos, coef_neg)  # (D, L, L)
    return torch.einsum("cij,bjc->bic", dense, x)
