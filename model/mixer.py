"""What every Toeplitz token mixer (TNN, FD-TNN, SKI-TNN) shares: an explicit causal kernel for any lag and,
once converted, the recurrent form (prefill by FFT, O(1) step) that tnn.model.conversion attaches.

A causal mixer exposes `coefficients(length, dtype)` (the kernel a_0..a_{length-1}) and `decay_rate(dtype)`;
`undecayed_coefficients` divides the decay out so that ETSC can fold it into the poles. Shapes: B batch,
L tokens, D channels, N modes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tnn.model.config import TnnConfig
from tnn.model.ssm import LayerParams, StepWeights, ssm_prefill, ssm_step, ssm_step_fused, step_weights, zero_state


class ToeplitzMixer(nn.Module):
    """Base of the token mixers: y = T v per channel. Subclasses set `causal` and implement `coefficients`."""

    causal: bool

    def __init__(self) -> None:
        super().__init__()
        self.ssm = None  # attached by conversion (tnn.model.conversion) or loading
        self.fused_step = False  # use the torch.compile'd step (TnnLM.fuse_step)

    @property
    def ssm(self) -> LayerParams | None:
        return self._ssm

    @ssm.setter
    def ssm(self, params: LayerParams | None) -> None:
        self._ssm = params
        self._step_weights = None if params is None else step_weights(params)

    @property
    def channels(self) -> int:
        raise NotImplementedError

    def coefficients(self, length: int, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """Kernel for `length` tokens: lags 0..length-1 (length, D) and, if bidirectional, lags -1..-(length-1)."""
        raise NotImplementedError

    def decay_rate(self, dtype: torch.dtype) -> Tensor:
        """Per-channel decay gamma (D,) that conversion folds into the poles; ones for a mixer without one."""
        return torch.ones(self.channels, dtype=dtype, device=self._device())

    def undecayed_coefficients(self, length: int) -> tuple[Tensor, Tensor]:
        """For conversion, in float64: t (length, D) with a_k = gamma^k t_k, and gamma (D,)."""
        gamma = self.decay_rate(torch.float64)
        lags = torch.arange(length, device=gamma.device, dtype=torch.float64)
        coef_pos, _ = self.coefficients(length, torch.float64)
        return coef_pos / gamma[None, :] ** lags[:, None], gamma

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _require_ssm(self) -> LayerParams:
        if self._ssm is None:
            raise RuntimeError(
                "this model has no recurrent form yet: convert it (tnn convert) or call "
                "tnn.model.conversion.attach_ssm before prefill/step"
            )
        return self._ssm

    def empty_state(self, batch_size: int) -> Tensor:
        """(B, 2N + h, D) zeros (tnn.model.ssm.step's layout)."""
        return zero_state(batch_size, self._require_ssm())

    def prefill(self, v: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """v: (B, L, D) -> (B, L, D) with the converted kernel, and a new state (B, 2N + h, D) after it."""
        return ssm_prefill(v, state, self._require_ssm())

    def step(self, v: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """v: (B, D) one token -> (B, D); `state` (B, 2N + h, D) is updated in place and returned."""
        self._require_ssm()
        weights: StepWeights = self._step_weights  # type: ignore[assignment]  (set with ssm)
        step = ssm_step_fused if self.fused_step else ssm_step
        return step(v, state, weights), state


def original_module_config(heads: int, head_dim: int, **fields: Any) -> TnnConfig:
    """The config of one standalone original module with `heads` x `head_dim` channels (no LM around it, the
    length follows each call)."""
    return TnnConfig(
        vocab_size=1,
        d_model=heads * head_dim,
        n_heads=heads,
        expand_ratio=1.0,
        padding_idx=None,
        train_length=None,
        **fields,
    )


def heads_last(x: Tensor) -> Tensor:
    """The original's per-head layout (B, h, n, e) -> ours (B, n, h*e), channel j*e + c for head j."""
    batch, heads, length, head_dim = x.shape
    return x.permute(0, 2, 1, 3).reshape(batch, length, heads * head_dim)


def heads_first(y: Tensor, heads: int) -> Tensor:
    """Inverse of `heads_last`: (B, n, h*e) -> (B, h, n, e)."""
    batch, length, channels = y.shape
    return y.reshape(batch, length, heads, channels // heads).permute(0, 2, 1, 3)
