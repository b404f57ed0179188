"""The relative position encoder (RPE) of the TNN family and its parts: the activation table and SimpleRMSNorm.

An MLP from one scalar (a lag for the TNN, a frequency for FD-TNN) to one value per output channel.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tnn.model.config import TnnConfig

SRMS_EPS = 1e-8


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The original activation lookup (spec §2.2), "none" being the identity."""
    table: dict[str, Callable[[Tensor], Tensor]] = {
        "none": lambda x: x,
        "silu": F.silu,
        "relu": F.relu,
        "gelu": F.gelu,
        "elu": F.elu,
        "sigmoid": torch.sigmoid,
        "leak": F.leaky_relu,
        "1+elu": lambda x: 1 + F.elu(x),
        "2+elu": lambda x: 2 + F.elu(x),
        "exp": lambda x: torch.exp(x - x.amax(dim=-1, keepdim=True).detach()),
        "sine": torch.sin,
    }
    return table[name]


class SimpleRMSNorm(nn.Module):
    """SimpleRMSNorm: x / (||x|| d^-1/2 + eps), no parameters, eps outside the root (not nn.RMSNorm)."""

    def __init__(self, dim: int, eps: float = SRMS_EPS) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        rms = x.norm(dim=-1, keepdim=True) * self.dim**-0.5
        return x / (rms + self.eps)


class RpeBlock(nn.Module):
    """Norm -> activation -> Linear, one block of the relative position encoder."""

    def __init__(self, d_in: int, d_out: int, act: str, bias: bool) -> None:
        super().__init__()
        self.norm = SimpleRMSNorm(d_in)
        self.act = activation(act)
        self.linear = nn.Linear(d_in, d_out, bias=bias)

    def forward(self, z: Tensor) -> Tensor:
        # weights are cast to the positions' dtype so that bf16 models still encode lags in float32
        weight = self.linear.weight.to(z.dtype)
        bias = None if self.linear.bias is None else self.linear.bias.to(z.dtype)
        return F.linear(self.act(self.norm(z)), weight, bias)


class Rpe(nn.Module):
    """Relative Position Encoder: an MLP from a scalar (the lag k; FD-TNN: a frequency) to `out_dim` values
    (default one coefficient per channel)."""

    def __init__(self, config: TnnConfig, out_dim: int | None = None) -> None:
        super().__init__()
        self.residual = config.rpe_residual
        self.pos_proj = nn.Linear(1, config.d_rpe, bias=config.bias)
        self.layers = nn.ModuleList(
            RpeBlock(config.d_rpe, config.d_rpe, config.rpe_act, config.bias) for _ in range(config.n_rpe_layers)
        )
        self.out = RpeBlock(config.d_rpe, out_dim or config.d_inner, config.rpe_act, config.bias)

    def forward(self, lags: Tensor) -> Tensor:
        """lags: (K,) floats -> (K, D)."""
        weight = self.pos_proj.weight.to(lags.dtype)
        bias = None if self.pos_proj.bias is None else self.pos_proj.bias.to(lags.dtype)
        z = F.linear(lags[:, None], weight, bias)  # (K, 1) -> (K, d_rpe)
        for block in self.layers:
            z = block(z) + z if self.residual else block(z)
        return self.out(z)


def native_rpe_key(key: str) -> str:
    """An original Rpe key (pos_proj.*, layers.{j}.2.*, out.2.*: nn.Sequential index 2) in our names."""
    return re.sub(r"\.2\.(weight|bias)$", r".linear.\1", key)
