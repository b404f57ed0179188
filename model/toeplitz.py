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


def toeplitz_matmul_fft(x: Tensor, coef_pos: Tensor, coef_neg: Tensor | None = None) -> Tensor:
    """y[b, i, c] = sum_j a_c[i - j] x[b, j, c] by a zero-padded FFT of length 2L (linear, not circular).

    x: (B, L, D); coef_pos: (L, D) lags 0..L-1; coef_neg: (L-1, D) lags -1..-(L-1), None for causal.
    Returns (B, L, D) in x's dtype; the FFT itself runs in float32 or wider.
    """
    length = x.shape[1]
    dt = fft_dtype(x.dtype)
    n_fft = 2 * length
    if coef_neg is None:
        kernel = coef_pos.to(dt)  # (L, D); zero-padded to 2L by rfft
    else:
        zero = coef_pos.new_zeros(1, coef_pos.shape[1])
        # circular layout of length 2L: [a_0 .. a_{L-1}, 0, a_{-(L-1)} .. a_{-1}]
        kernel = torch.cat([coef_pos, zero, coef_neg.flip(0)], dim=0).to(dt)  # (2L, D)
    x_f = torch.fft.rfft(x.to(dt), n=n_fft, dim=1)  # (B, L+1, D) complex
    k_f = torch.fft.rfft(kernel, n=n_fft, dim=0)  # (L+1, D) complex
    y = torch.fft.irfft(x_f * k_f, n=n_fft, dim=1)[:, :length]  # (B, 2L, D) -> (B, L, D)
    return y.to(x.dtype)


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
