"""FD-TNN (Moreno et al., "SKI to go Faster", 2023): the RPE gives the kernel's frequency response directly.

The RPE maps a frequency w in [0, pi] (N/2 + 1 points of an N-point FFT grid, N = the smallest power of two >= 2n)
to one value per channel (causal) or two (bidirectional: real and imaginary part, the imaginary part forced to 0 at
DC and Nyquist). A causal operator models only the real part A(w); the imaginary part follows from causality:
h_e = irfft_N(A) is the even sequence with spectrum A, and the causal kernel is h[0] = h_e[0], h[t] = 2 h_e[t] for
t = 1..N/2, 0 beyond. There is no decay: a smooth response has a fast-decaying impulse response.
Then y = irfft_N(rfft_N(x) * H)[:n].

The response depends on N, so a causal LM freezes N at its reference length (`reference_length`: the training
length) and uses that one kernel h_N (support 0..N/2, zero beyond, explicit for any lag) for every length, prefill
and decode alike; without a reference length the grid follows each call's length, as in the original code.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tnn.model.config import TnnConfig
from tnn.model.mixer import ToeplitzMixer, heads_first, heads_last, original_module_config
from tnn.model.rpe import Rpe, native_rpe_key
from tnn.model.toeplitz import fft_dtype, toeplitz_matmul_fft


def fft_size(length: int) -> int:
    """The original's FFT size: the smallest power of two >= 2 * length."""
    return 1 << (2 * length - 1).bit_length()


def causal_spectrum(real: Tensor) -> Tensor:
    """The spectrum (F, D) complex of the causal kernel whose real part is `real` (F, D), F = N/2 + 1."""
    n_fft = 2 * (real.shape[0] - 1)
    even = torch.fft.irfft(real, n=n_fft, dim=0)  # (N, D): the even sequence with spectrum `real`
    kernel = torch.zeros_like(even)
    kernel[0] = even[0]
    kernel[1 : n_fft // 2 + 1] = 2 * even[1 : n_fft // 2 + 1]  # negative times (t > N/2) stay zero
    return torch.fft.rfft(kernel, dim=0)


class FdTno(ToeplitzMixer):
    """Frequency-domain Toeplitz operator: x (B, L, D) -> (B, L, D); also called as the original, (B, h, n, e)."""

    def __init__(self, config: TnnConfig, grid_dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.causal = config.causal
        self.n_heads = config.n_heads
        self.d_inner = config.d_inner
        self.reference_length = config.train_length if config.causal else None
        self.grid_dtype = grid_dtype  # the original builds its grid in torch's default dtype (float32)
        self.rpe = Rpe(config, out_dim=config.d_inner * (1 if config.causal else 2))

    @property
    def channels(self) -> int:
        return self.d_inner

    def decay_rate(self, dtype: torch.dtype) -> Tensor:
        """FD-TNN has no decay, but conversion must put every pole strictly inside the unit circle: report
        gamma = 2^(-1/n_ref), half over the reference length. ETSC stays exact up to n (it folds a_k = gamma^k
        (a_k / gamma^k), amplifying the kernel by at most 2), and its periodic copies past n fade."""
        if self.reference_length is None:
            return super().decay_rate(dtype)
        return torch.full((self.d_inner,), 0.5 ** (1 / self.reference_length), dtype=dtype, device=self._device())

    @classmethod
    def from_original(
        cls, constructor_args: dict[str, Any], state_dict: dict[str, Tensor], *, grid_dtype: torch.dtype = torch.float64
    ) -> FdTno:
        """The module `TnoFD(**constructor_args)` of jonathanmei/ski-tnn with its state dict (float64 weights).

        The grid follows the call's length, as in the original; `grid_dtype=torch.float32` reproduces the
        original's default-dtype grid bit for bit, float64 is the exact grid."""
        args = {
            "residual": False,
            "act": "relu",
            "bias": True,
            "layers": 3,
            "norm_type": "simplermsnorm",
            **constructor_args,
        }
        if args["norm_type"] != "simplermsnorm":
            raise ValueError(f"norm_type {args['norm_type']!r} is not supported (only 'simplermsnorm')")
        config = original_module_config(
            args["h"],
            args["dim"],
            d_rpe=args["rpe_dim"],
            n_rpe_layers=args["layers"],
            rpe_act=args["act"],
            rpe_residual=args["residual"],
            causal=args["causal"],
            bias=args["bias"],
            operator="fd",
            decay="none",
        )
        module = cls(config, grid_dtype=grid_dtype).double()
        module.load_state_dict({f"rpe.{native_rpe_key(k)}": v for k, v in _rpe_keys(state_dict).items()})
        return module.eval()

    def frequency_response(self, n_fft: int, dtype: torch.dtype) -> Tensor:
        """H at the N/2 + 1 frequencies of an N-point FFT: (N/2 + 1, D) complex."""
        n_freq = n_fft // 2 + 1
        grid = torch.linspace(0.0, math.pi, n_freq, dtype=self.grid_dtype, device=self._device()).to(dtype)
        raw = self.rpe(grid)  # (F, D) causal, (F, 2D) bidirectional
        if self.causal:
            return causal_spectrum(raw)
        pairs = raw.view(n_freq, self.n_heads, 2, -1)  # per head: [real part (e) | imaginary part (e)]
        real = pairs[:, :, 0].reshape(n_freq, -1)
        imag = pairs[:, :, 1].reshape(n_freq, -1).clone()
        imag[0] = 0.0  # DC and Nyquist are real
        imag[-1] = 0.0
        return torch.complex(real, imag)

    def _kernel_fft_size(self, length: int) -> int:
        return fft_size(self.reference_length) if self.reference_length else fft_size(length)

    def time_kernel(self, n_fft: int, dtype: torch.dtype) -> Tensor:
        """irfft of the response: (N, D); causal support is 0..N/2, lag -k sits at index N - k."""
        return torch.fft.irfft(self.frequency_response(n_fft, dtype), n=n_fft, dim=0)

    def coefficients(self, length: int, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        n_fft = self._kernel_fft_size(length)
        kernel = self.time_kernel(n_fft, dtype)  # (N, D)
        if self.causal:
            support = kernel[: n_fft // 2 + 1]  # the rest is zero (round-off only)
            return F.pad(support, (0, 0, 0, max(0, length - support.shape[0])))[:length], None
        return kernel[:length], kernel.flip(0)[: length - 1]  # lags -1..-(L-1): indices N-1, N-2, ...

    def forward(self, x: Tensor, dim: int = -2) -> Tensor:
        """x: (B, L, D), or the original's (B, h, n, e); the sequence axis must be `dim` = -2."""
        if dim not in (-2, x.ndim - 2):
            raise ValueError(f"FdTno runs over dim -2 (the sequence axis), got dim={dim}")
        if x.ndim == 4:
            return heads_first(self(heads_last(x)), x.shape[1])
        length = x.shape[1]
        dt = fft_dtype(x.dtype)
        n_fft = self._kernel_fft_size(length)
        if n_fft < fft_size(length):  # longer than the frozen grid: the explicit kernel, zero past N/2
            coef_pos, _ = self.coefficients(length, dt)
            return toeplitz_matmul_fft(x, coef_pos)
        response = self.frequency_response(n_fft, dt)  # (F, D)
        x_f = torch.fft.rfft(x.to(dt), n=n_fft, dim=1)  # (B, F, D)
        y = torch.fft.irfft(x_f * response, n=n_fft, dim=1)[:, :length]  # (B, N, D) -> (B, L, D)
        return y.to(x.dtype)


def _rpe_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The original Rpe keys (rpe.pos_proj.*, rpe.layers.{j}.2.*, rpe.out.2.*) without the 'rpe.' prefix."""
    found = {k.removeprefix("rpe."): v.double() for k, v in state_dict.items() if k.startswith("rpe.")}
    unexpected = sorted(k for k in state_dict if not k.startswith("rpe."))
    if unexpected:
        raise ValueError(f"unexpected key {unexpected[0]!r} in the TnoFD state dict")
    return found
