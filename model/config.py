"""TnnConfig: the architecture hyperparameters of a TNN language model, saved as config.json.

Defaults are the paper's main LM, fairseq-evo arch `tnn_v2_decay_99_pre` (spec §3.1), except the vocabulary,
which every model must state. Runtime knobs (device, dtype, batch, port) never live here.
This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

MODEL_TYPE = "tnn"
FORMAT_VERSION = 1

Decay = Literal["fixed", "learned", "none"]
NormPosition = Literal["pre", "post"]
SsmMethod = Literal["reduced", "etsc-tail", "etsc-inclusive", "etsc"]
ETSC_METHODS: tuple[SsmMethod, ...] = ("etsc-tail", "etsc-inclusive", "etsc")  # exact to lag n-1 (DFT-grid poles)

# The activation names of the original lookup table (spec §2.2); anything else there means identity,
# which we spell "none" and refuse unknown strings instead of silently treating them as identity.
ACTIVATIONS = ("none", "silu", "relu", "gelu", "elu", "sigmoid", "leak", "1+elu", "2+elu", "exp", "sine")


@dataclass(frozen=True)
class SsmConfig:
    """How the Toeplitz kernels were converted into diagonal state space models (written by `tnn convert`)."""

    method: SsmMethod
    length: int  # conversion length n: the kernel is exact for lags 0..n-1 (0..n for etsc-inclusive, etsc-tail)
    modes: int | tuple[int, ...]  # complex modes (state slots) per channel: one for every layer, or per layer
    full_state: bool = False  # True: all modes kept, no conjugate halving (ETSC methods)
    fir_length: int = 0  # exact FIR head (lags 0..h-1) of the reduced method; the state keeps the last h inputs

    def __post_init__(self) -> None:
        _check_literal("ssm.method", self.method, SsmMethod)
        _check_positive("ssm.length", self.length)
        if isinstance(self.modes, list | tuple):
            if not self.modes:
                raise ValueError("ssm.modes must not be an empty list")
            for count in self.modes:
                _check_positive("ssm.modes", count)
            object.__setattr__(self, "modes", tuple(self.modes))
        else:
            _check_positive("ssm.modes", self.modes)
        if not isinstance(self.fir_length, int) or isinstance(self.fir_length, bool) or self.fir_length < 0:
            raise ValueError(f"ssm.fir_length must be an integer >= 0, got {self.fir_length!r}")

    def layer_modes(self, n_layers: int) -> tuple[int, ...]:
        """Modes of each layer."""
        if isinstance(self.modes, tuple):
            if len(self.modes) != n_layers:
                raise ValueError(f"ssm.modes lists {len(self.modes)} layers, the model has {n_layers}")
            return self.modes
        return (self.modes,) * n_layers

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if isinstance(self.modes, tuple):
            data["modes"] = list(self.modes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SsmConfig:
        _reject_unknown("ssm", data, cls)
        return cls(**data)


@dataclass(frozen=True)
class TnnConfig:
    """Architecture of a causal (or bidirectional) TNN LM. Field names follow the house `d_*`/`n_*` style;
    the fairseq argument each one comes from is given in the comment."""

    vocab_size: int
    d_model: int = 512  # decoder_embed_dim
    n_layers: int = 7  # decoder_layers
    n_heads: int = 1  # decoder_attention_heads; cosmetic for the maths (spec §2.4), shapes gamma (h, 1, e)
    expand_ratio: float = 3.0  # GTU inner width d_inner = floor(int(expand_ratio * d_model) / h) * h
    d_glu: int = 512  # glu_dim
    d_rpe: int = 64  # rpe_embedding: hidden width of the relative position encoder
    n_rpe_layers: int = 6  # rpe_layers
    rpe_act: str = "relu"
    rpe_residual: bool = False  # residual
    causal: bool = True
    decay: Decay = "fixed"  # use_decay -> "fixed", use_multi_decay -> "learned", neither -> "none"
    gamma: float = 0.99  # fixed decay, or the lower bound lambda of the learned decay
    kernel_act: str = "none"  # act_type, applied to the decayed kernel
    normalize: bool = False  # Tno normalize: divide by the row sums of T
    gtu_act: str = "silu"  # act_fun
    gtu_norm: bool = False  # use_norm: SimpleRMSNorm(d_inner) inside the GTU
    glu_act: str = "silu"
    norm_position: NormPosition = "pre"  # decoder_normalize_before
    final_norm: bool = True  # the LayerNorm(d_model) before the tied output projection
    scale_embedding: bool = True  # multiply embeddings by sqrt(d_model) (no_scale_embedding=False)
    bias: bool = True
    padding_idx: int | None = 1
    dropout: float = 0.1  # training only
    train_length: int | None = 512  # tokens_per_sample the model was trained at; default conversion length
    ssm: SsmConfig | None = field(default=None)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_glu", "d_rpe"):
            _check_positive(name, getattr(self, name))
        if self.n_rpe_layers < 0:
            raise ValueError(f"n_rpe_layers must be >= 0, got {self.n_rpe_layers}")
        if not self.expand_ratio > 0:
            raise ValueError(f"expand_ratio must be > 0, got {self.expand_ratio}")
        if self.d_inner < self.n_heads:
            raise ValueError(
                f"expand_ratio * d_model = {self.expand_ratio * self.d_model} gives no channel per head "
                f"for n_heads={self.n_heads}"
            )
        _check_literal("decay", self.decay, Decay)
        _check_literal("norm_position", self.norm_position, NormPosition)
        for name in ("rpe_act", "kernel_act", "gtu_act", "glu_act"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"{name} must be one of {ACTIVATIONS}, got {getattr(self, name)!r}")
        if self.decay != "none" and not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.padding_idx is not None and not 0 <= self.padding_idx < self.vocab_size:
            raise ValueError(f"padding_idx must be in [0, vocab_size={self.vocab_size}), got {self.padding_idx}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.train_length is not None:
            _check_positive("train_length", self.train_length)
        if self.ssm is not None and not isinstance(self.ssm, SsmConfig):
            raise TypeError(f"ssm must be an SsmConfig or None, got {type(self.ssm).__name__}")

    @property
    def d_inner(self) -> int:
        """Channels of the Toeplitz operator (d1 in the spec)."""
        return int(self.expand_ratio * self.d_model) // self.n_heads * self.n_heads

    @property
    def d_head(self) -> int:
        return self.d_inner // self.n_heads

    def replace(self, **changes: Any) -> TnnConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = value.to_dict() if isinstance(value, SsmConfig) else value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TnnConfig:
        data = dict(data)
        model_type = data.pop("model_type", None)
        if model_type != MODEL_TYPE:
            raise ValueError(f"config model_type must be {MODEL_TYPE!r}, got {model_type!r}")
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"config format_version {version!r} is not supported (this build reads {FORMAT_VERSION})")
        _reject_unknown("config", data, cls)
        if "vocab_size" not in data:
            raise ValueError("config is missing the required field 'vocab_size'")
        if data.get("ssm") is not None:
            data["ssm"] = SsmConfig.from_dict(data["ssm"])
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TnnConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_literal(name: str, value: Any, literal: Any) -> None:
    allowed = get_args(literal)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _reject_unknown(what: str, data: dict[str, Any], cls: type) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{what} has unknown keys {unknown}; known keys are {sorted(known)}")
