"""SKI-TNN (Moreno et al., "SKI to go Faster", 2023): a sparse band plus a low-rank kernel interpolation, no MLP.

The kernel is a piecewise-linear function of the warped lag s = sign(k) gamma^|k| in [-1, 1]: r learned values
per channel for k >= 0 (`alphas`) and r for k < 0 (`betas`, bidirectional only) on a uniform grid in s, with a
pinned 0 at s = 0 (k -> +-inf), so the decay is built into the warp.

Bidirectional (the paper's O(n) path), per channel: y = conv(x) + W S W^T x, with
- conv: a depthwise cross-correlation with `taps` (odd) learned taps, "same" padding;
- S (r x r): the Toeplitz matrix of the kernel at the inducing-point lags (i - j)(n-1)/(r-1);
- W (n x r): interpolation from position t to the inducing points, as the original code builds it (the golden data
  is the contract): positions t = linspace(0, n, n); u = the upper neighbour (searchsorted), weight
  (t - p_u)(r-1)/(n-1) on column u and 1 minus that on column u + 1 (u clamped to r - 2), all times gamma^(t n).
  W has two non-zeros per row, so W^T x and W z are a scatter and a gather: O(n) per channel.
Causal: one Toeplitz product with the kernel sampled at r lags k_i = i (n-1)/(r-1), linearly interpolated in k,
plus the causal half of the taps added to lags 0..taps//2. The sample spacing depends on n; a causal LM freezes it
at its reference length (`reference_length`), which makes the kernel explicit for every lag (the same uniform
samples continue past the reference length) and identical for prefill and decode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tnn.model.config import TnnConfig
from tnn.model.mixer import ToeplitzMixer, heads_first, heads_last, original_module_config
from tnn.model.toeplitz import fft_dtype, toeplitz_matmul_fft


def interpolate_linear(values: Tensor, index: Tensor) -> Tensor:
    """values (D, P) at fractional indices (K,) in [0, P-1], linearly: (K, D)."""
    low = index.floor()
    frac = (index - low)[:, None]  # (K, 1)
    lo = low.long().clamp(0, values.shape[1] - 1)
    hi = (lo + 1).clamp(max=values.shape[1] - 1)
    return values[:, lo].T * (1 - frac) + values[:, hi].T * frac


class SkiTno(ToeplitzMixer):
    """SKI Toeplitz operator: x (B, L, D) -> (B, L, D), also the original's layout (B, n, h*e)."""

    def __init__(self, config: TnnConfig) -> None:
        super().__init__()
        self.causal = config.causal
        self.n_heads = config.n_heads
        self.rank = config.ski_rank
        self.taps = config.ski_taps
        self.half = config.ski_taps // 2
        self.reference_length = config.train_length if config.causal else None
        channels = config.d_inner
        self.register_buffer("gamma", torch.tensor([config.gamma]))  # (1,) frozen decay of the warp
        self.conv_kernel = nn.Parameter(torch.randn(channels, self.half + 1 if self.causal else self.taps))
        self.alphas = nn.Parameter(torch.randn(1, channels, 1, self.rank))  # kernel values for lags k >= 0
        if not self.causal:
            self.betas = nn.Parameter(torch.randn(1, channels, 1, self.rank))  # lags k < 0

    @property
    def channels(self) -> int:
        return self.alphas.shape[1]

    def decay_rate(self, dtype: torch.dtype) -> Tensor:
        """The warp's gamma for every channel: past the first inducing value the kernel interpolates towards the
        pinned 0 at s = 0, so its far tail is r alphas_0 gamma^k, an exact exponential that ETSC folds into the poles
        (its periodic copies past n then fade as gamma^m, and etsc-tail's tail mode follows the tail)."""
        return self.gamma.to(dtype).expand(self.channels)

    @classmethod
    def from_original(cls, constructor_args: dict[str, Any], state_dict: dict[str, Tensor]) -> SkiTno:
        """The module `SKITnoInvTime(**constructor_args)` of jonathanmei/ski-tnn with its state dict, in float64.
        `rpe_dim`, `layers`, `act`... are accepted and ignored, as there; the length follows each call."""
        args = {"causal": False, "gamma": 0.999, **constructor_args}  # the original's DEFAULT_GAMMA
        if args.get("use_decay") is False:
            raise ValueError("SKITnoInvTime always decays (the warp); use_decay=False is not supported")
        config = original_module_config(
            args["h"],
            args["dim"],
            causal=args["causal"],
            operator="ski",
            gamma=float(state_dict["gamma"].reshape(-1)[0]) if "gamma" in state_dict else args["gamma"],
            ski_rank=args["r"],
            ski_taps=args["nk"] + 1 - args["nk"] % 2,  # made odd, as there
        )
        module = cls(config).double()
        module.load_state_dict({k: v.double() for k, v in state_dict.items()})
        return module.eval()

    def warped_kernel(self, lags: Tensor) -> Tensor:
        """The kernel at real-valued lags (K,): (K, D), interpolated in the warped lag sign(k) gamma^|k|."""
        gamma = self.gamma.to(lags.dtype)
        sign = torch.where(lags >= 0, 1.0, -1.0).to(lags.dtype)
        warped = sign * gamma ** lags.abs()  # (K,) in [-1, 1]
        alphas = self.alphas[0, :, 0].to(lags.dtype)  # (D, r)
        zero = alphas.new_zeros(alphas.shape[0], 1)
        if self.causal:
            return interpolate_linear(torch.cat([zero, alphas], dim=1), warped * self.rank)  # grid 0..r <-> s 0..1
        betas = self.betas[0, :, 0].to(lags.dtype)
        values = torch.cat([betas, zero, alphas], dim=1)  # (D, 2r+1) <-> s = -1..1
        return interpolate_linear(values, (warped + 1) * self.rank)

    def _spacing(self, length: int) -> float:
        """Lag distance between inducing points: (n-1)/(r-1), n the reference length (or this call's)."""
        n = self.reference_length or length
        return (n - 1) / (self.rank - 1)

    def coefficients(self, length: int, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """Causal kernel a_0..a_{length-1} (length, D): interpolated samples plus the taps at lags 0..taps//2."""
        if not self.causal:
            raise ValueError("a bidirectional SKI operator is sparse + low rank, not one Toeplitz kernel")
        device = self.alphas.device
        spacing = self._spacing(length)
        if spacing == 0:  # a single position: only lag 0
            kernel = self.warped_kernel(torch.zeros(1, dtype=dtype, device=device))
        else:
            n_samples = int((length - 1) / spacing) + 2
            samples = self.warped_kernel(torch.arange(n_samples, dtype=dtype, device=device) * spacing)  # (S, D)
            position = torch.arange(length, dtype=dtype, device=device) / spacing  # (L,) in sample units
            kernel = interpolate_linear(samples.T, position)  # (L, D)
        taps = self.conv_kernel.to(dtype).T[:length]  # (taps//2 + 1, D)
        return kernel + F.pad(taps, (0, 0, 0, length - taps.shape[0])), None

    def interpolation(self, length: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """W of the bidirectional path as (column u, weight on u, weight on u + 1), each (n,), falloff included."""
        device = self.alphas.device
        positions = torch.linspace(0, length, length, dtype=dtype, device=device)  # the original's absolute grid
        spacing = (length - 1) / (self.rank - 1)
        inducing = torch.arange(self.rank, dtype=dtype, device=device) * spacing
        column = torch.searchsorted(inducing, positions).clamp(0, self.rank - 2)  # (n,)
        lower = (positions - inducing[column]) / spacing if spacing else torch.zeros_like(positions)
        falloff = self.gamma.to(dtype) ** (positions * length)
        return column, lower * falloff, (1 - lower) * falloff

    def _low_rank(self, x: Tensor) -> Tensor:
        """W S W^T x: (B, L, D) -> (B, L, D), by a scatter, an r x r Toeplitz FFT product and a gather."""
        batch, length, channels = x.shape
        column, w_lo, w_hi = self.interpolation(length, x.dtype)
        z = x.new_zeros(batch, self.rank, channels)
        z.index_add_(1, column, x * w_lo[None, :, None])
        z.index_add_(1, column + 1, x * w_hi[None, :, None])  # (B, r, D) = W^T x
        spacing = (length - 1) / (self.rank - 1)
        lags = torch.arange(self.rank, dtype=x.dtype, device=x.device) * spacing
        s_z = toeplitz_matmul_fft(z, self.warped_kernel(lags), self.warped_kernel(-lags[1:]))  # (B, r, D)
        return s_z[:, column] * w_lo[None, :, None] + s_z[:, column + 1] * w_hi[None, :, None]  # (B, L, D)

    def _sparse(self, x: Tensor) -> Tensor:
        """The band: depthwise cross-correlation with `taps` taps, same length. (B, L, D) -> (B, L, D)."""
        weight = self.conv_kernel.to(x.dtype)[:, None]  # (D, 1, taps)
        return F.conv1d(x.transpose(1, 2), weight, padding=self.half, groups=x.shape[2]).transpose(1, 2)

    def forward(self, x: Tensor, dim: int = -2) -> Tensor:
        """x: (B, L, D) (the original's (B, n, h*e)), or (B, h, n, e); the sequence axis must be dim -2."""
        if dim not in (-2, x.ndim - 2):
            raise ValueError(f"SkiTno runs over dim -2 (the sequence axis), got dim={dim}")
        if x.ndim == 4:
            return heads_first(self(heads_last(x)), x.shape[1])
        dt = fft_dtype(x.dtype)
        if self.causal:
            coef_pos, _ = self.coefficients(x.shape[1], dt)
            return toeplitz_matmul_fft(x.to(dt), coef_pos).to(x.dtype)
        y = self._sparse(x.to(dt)) + self._low_rank(x.to(dt))
        return y.to(x.dtype)
