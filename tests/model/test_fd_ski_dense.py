"""Both directions of FD-TNN and SKI-TNN against dense float64 operators built from the definitions
(explicit DFT sums and numpy interpolation, no FFT and none of the operators' own helpers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tnn.model.fd_tno import FdTno, fft_size
from tnn.model.ski_tno import SkiTno

from .helpers import relative_error, tiny_config

TOLERANCE = 1e-12  # float64 FFT vs dense sums: round-off only


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return module.double().eval()


def _fd(causal: bool, train_length: int | None = None) -> FdTno:
    torch.manual_seed(3)
    config = tiny_config(
        d_model=6, n_heads=2, expand_ratio=1.0, operator="fd", decay="none", causal=causal, train_length=train_length
    )
    return _perturbed(FdTno(config), 4)


def _ski(causal: bool, train_length: int | None = None) -> SkiTno:
    torch.manual_seed(5)
    config = tiny_config(
        d_model=6,
        expand_ratio=1.0,
        operator="ski",
        causal=causal,
        ski_rank=8,
        ski_taps=5,
        gamma=0.9,
        train_length=train_length,
    )
    return _perturbed(SkiTno(config), 6)


def _fd_time_kernel_by_sums(real: np.ndarray, imag: np.ndarray | None, n_fft: int) -> np.ndarray:
    """h[t] = (1/N) sum over all N bins of H_k e^{2 pi i k t / N}, H Hermitian; causal: the even part of A
    folded onto t = 0..N/2 (imag None). real/imag (F, D) -> (N, D)."""
    t = np.arange(n_fft)[:, None]
    k = np.arange(1, n_fft // 2)[None, :]
    cos, sin = np.cos(2 * np.pi * k * t / n_fft), np.sin(2 * np.pi * k * t / n_fft)  # (N, F-2)
    nyquist = (-1.0) ** np.arange(n_fft)[:, None]
    even = (real[0] + nyquist * real[-1] + 2 * cos @ real[1:-1]) / n_fft  # (N, D)
    if imag is not None:
        return even - 2 * sin @ imag[1:-1] / n_fft
    causal = np.zeros_like(even)
    causal[0] = even[0]
    causal[1 : n_fft // 2 + 1] = 2 * even[1 : n_fft // 2 + 1]
    return causal


def _fd_dense(fd: FdTno, length: int, n_fft: int) -> np.ndarray:
    """(D, L, L): T[c, i, j] = h_c[(i - j) mod N] (causal: zero above the diagonal)."""
    grid = torch.linspace(0, math.pi, n_fft // 2 + 1, dtype=torch.float64)
    with torch.no_grad():
        raw = fd.rpe(grid).numpy()  # (F, D) or (F, 2D): [real | imag] per head
    if fd.causal:
        kernel = _fd_time_kernel_by_sums(raw, None, n_fft)
    else:
        pairs = raw.reshape(raw.shape[0], fd.n_heads, 2, -1)
        real = pairs[:, :, 0].reshape(raw.shape[0], -1)
        imag = pairs[:, :, 1].reshape(raw.shape[0], -1)
        kernel = _fd_time_kernel_by_sums(real, imag, n_fft)
    lags = np.arange(length)[:, None] - np.arange(length)[None, :]
    if fd.causal:  # support 0..N/2: zero at every larger lag, however long the sequence
        kernel = np.concatenate([kernel[: n_fft // 2 + 1], np.zeros((max(length, n_fft), kernel.shape[1]))])
        return np.where(lags[None] >= 0, kernel[np.clip(lags, 0, None)].transpose(2, 0, 1), 0.0)
    return kernel[lags % n_fft].transpose(2, 0, 1)  # (D, L, L)


def _apply(dense: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("cij,bjc->bic", torch.from_numpy(dense), x)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [1, 7, 16, 29])
def test_fd_matches_dense_definition(causal, length):
    fd = _fd(causal)
    x = torch.randn(2, length, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        y = fd(x)
    assert relative_error(y, _apply(_fd_dense(fd, length, fft_size(length)), x)) <= TOLERANCE


@pytest.mark.parametrize("length", [5, 16, 40])
def test_fd_causal_lm_freezes_the_grid_at_the_reference_length(length):
    """A causal LM keeps N = fft_size(train_length) for every length; past N/2 the kernel is zero."""
    fd = _fd(True, train_length=16)  # N = 32, kernel support 0..16
    x = torch.randn(2, length, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        y = fd(x)
        coef, _ = fd.coefficients(length, torch.float64)
    expected = _apply(_fd_dense(fd, length, 32), x)
    assert relative_error(y, expected) <= TOLERANCE
    if length > 17:
        assert coef[17:].abs().max() < 1e-15


def _warped_numpy(ski: SkiTno, lags: np.ndarray) -> np.ndarray:
    """The kernel at `lags` by np.interp over the s = sign(k) gamma^|k| grid: (K, D)."""
    gamma = float(ski.gamma[0])
    alphas = ski.alphas[0, :, 0].detach().numpy()
    r = alphas.shape[1]
    s = np.where(lags >= 0, 1.0, -1.0) * gamma ** np.abs(lags)
    if ski.causal:
        grid, values = np.linspace(0, 1, r + 1), np.concatenate([np.zeros((alphas.shape[0], 1)), alphas], 1)
    else:
        betas = ski.betas[0, :, 0].detach().numpy()
        grid = np.linspace(-1, 1, 2 * r + 1)
        values = np.concatenate([betas, np.zeros((alphas.shape[0], 1)), alphas], 1)
    return np.stack([np.interp(s, grid, row) for row in values], axis=1)


def _ski_dense(ski: SkiTno, length: int) -> np.ndarray:
    taps = ski.conv_kernel.detach().numpy()
    r = ski.alphas.shape[-1]
    lags = np.arange(length)[:, None] - np.arange(length)[None, :]
    if ski.causal:
        n_ref = ski.reference_length or length
        spacing = (n_ref - 1) / (r - 1)
        sample_lags = np.arange(int((length - 1) / spacing) + 2) * spacing
        samples = _warped_numpy(ski, sample_lags)  # (S, D)
        kernel = np.stack([np.interp(np.arange(length), sample_lags, col) for col in samples.T], axis=1)
        kernel[: taps.shape[1]] += taps.T[:length]
        return np.where(lags[None] >= 0, kernel[np.clip(lags, 0, None)].transpose(2, 0, 1), 0.0)
    half = taps.shape[1] // 2
    band = np.where(np.abs(lags) <= half, taps[:, np.clip(half - lags, 0, taps.shape[1] - 1)], 0.0)  # (D, L, L)
    gamma = float(ski.gamma[0])
    spacing = (length - 1) / (r - 1)
    inducing = np.arange(r) * spacing
    w = np.zeros((length, r))
    for row, t in enumerate(np.linspace(0, length, length)):
        upper = min(int(np.searchsorted(inducing, t)), r - 2)
        lower_weight = (t - inducing[upper]) / spacing
        w[row, upper] += lower_weight * gamma ** (t * length)
        w[row, upper + 1] += (1 - lower_weight) * gamma ** (t * length)
    s = _warped_numpy(ski, ((np.arange(r)[:, None] - np.arange(r)[None, :]) * spacing).ravel())  # (r*r, D)
    low_rank = np.einsum("ir,crs,js->cij", w, s.T.reshape(-1, r, r), w)
    return band + low_rank


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [9, 33, 60])
def test_ski_matches_dense_definition(causal, length):
    ski = _ski(causal)
    x = torch.randn(2, length, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        y = ski(x)
    assert relative_error(y, _apply(_ski_dense(ski, length), x)) <= TOLERANCE


@pytest.mark.parametrize("length", [5, 24, 70])
def test_ski_causal_lm_freezes_the_spacing(length):
    ski = _ski(True, train_length=24)
    x = torch.randn(1, length, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        y = ski(x)
    assert relative_error(y, _apply(_ski_dense(ski, length), x)) <= TOLERANCE


def test_ski_dense_oracle_reproduces_the_golden_matrix(golden):
    """The dense builder above agrees with the original's own matrix, so it is a faithful definition."""
    import json

    folder = golden / "ski_tno_bidirectional"
    args = json.loads((folder / "case.json").read_text())["constructor_args"]
    ski = SkiTno.from_original(args, load_file(folder / "module.safetensors"))
    expected = load_file(folder / "expected.safetensors")["operator_dense"]
    assert relative_error(torch.from_numpy(_ski_dense(ski, 101)), expected) <= 1e-9
