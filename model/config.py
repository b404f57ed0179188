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
Operator = Literal["tnn", "fd", "ski"]

# Upper bounds far above any real TNN (the paper's largest: d_model 1024, 24 layers, 100k vocabulary), so that an
# absurd config.json is refused by name before a tensor is allocated or a kernel of that length computed.
MAX_VOCAB_SIZE = 2**24
MAX_WIDTH = 2**16  # d_model, d_glu, d_rpe, d_inner
MAX_LAYERS = 1024  # n_layers
MAX_RPE_LAYERS = 64
MAX_EXPAND_RATIO = 64.0
MAX_LENGTH = 2**20  # train_length and the conversion length: the kernel is materialized at that length

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
        _check_types("ssm.", self)
        _check_literal("ssm.method", self.method, SsmMethod)
        _check_positive("ssm.length", self.length, MAX_LENGTH)
        if isinstance(self.modes, list | tuple):
            if not self.modes:
                raise ValueError("ssm.modes must not be an empty list")
            for count in self.modes:
                _check_positive("ssm.modes", count, self.length + 1)
            object.__setattr__(self, "modes", tuple(self.modes))
        else:
            _check_positive("ssm.modes", self.modes, self.length + 1)
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
    operator: Operator = "tnn"  # token mixer: TNN (RPE over lags), FD-TNN (RPE over frequencies), SKI-TNN (tnn_type)
    ski_rank: int = 32  # SKI-TNN: inducing points r (rank)
    ski_taps: int = 17  # SKI-TNN: taps of the sparse band, odd (nk, made odd); a causal model keeps taps//2 + 1
    decay: Decay = "fixed"  # use_decay -> "fixed", use_multi_decay -> "learned", neither -> "none"
    gamma: float = 0.99  # fixed decay, or the lower bound lambda of the learned decay
    kernel_act: str = "none"  # act_type, applied to the decayed kernel
    normalize: bool = False  # Tno normalize: divide by the row sums of T
    gtu_act: str = "silu"  # act_fun
    gtu_norm: bool = False  # use_norm: SimpleRMSNorm(d_inner) inside the GTU
    glu_act: str = "silu"
    norm_position: NormPosition = "pre"  # decoder_normalize_before
    final_norm: bool = True  # the LayerNorm(d_model) before the tied output projection
    embed_norm: bool = False  # LayerNorm(d_model) right after the embedding (RoBERTa's layernorm_embedding)
    mlm_head: bool = False  # RoBERTa LM head before the tied projection: dense, GELU, LayerNorm, output bias
    scale_embedding: bool = True  # multiply embeddings by sqrt(d_model) (no_scale_embedding=False)
    bias: bool = True
    padding_idx: int | None = 1
    dropout: float = 0.1  # training only
    train_length: int | None = 512  # tokens_per_sample the model was trained at; default conversion length
    ssm: SsmConfig | None = field(default=None)

    def __post_init__(self) -> None:
        _check_types("", self)
        _check_positive("vocab_size", self.vocab_size, MAX_VOCAB_SIZE)
        _check_positive("n_layers", self.n_layers, MAX_LAYERS)
        for name in ("d_model", "n_heads", "d_glu", "d_rpe"):
            _check_positive(name, getattr(self, name), MAX_WIDTH)
        if not 0 <= self.n_rpe_layers <= MAX_RPE_LAYERS:
            raise ValueError(f"n_rpe_layers must be in [0, {MAX_RPE_LAYERS}], got {self.n_rpe_layers}")
        if not 0 < self.expand_ratio <= MAX_EXPAND_RATIO:
            raise ValueError(f"expand_ratio must be in (0, {MAX_EXPAND_RATIO:g}], got {self.expand_ratio}")
        if self.d_inner > MAX_WIDTH:
            raise ValueError(f"expand_ratio * d_model must be at most {MAX_WIDTH}, got {self.d_inner}")
        if self.d_inner < self.n_heads:
            raise ValueError(
                f"expand_ratio * d_model = {self.expand_ratio * self.d_model} gives no channel per head "
                f"for n_heads={self.n_heads}"
            )
        _check_literal("decay", self.decay, Decay)
        _check_literal("norm_position", self.norm_position, NormPosition)
        _check_literal("operator", self.operator, Operator)
        self._check_operator()
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
            _check_positive("train_length", self.train_length, MAX_LENGTH)

    def _check_operator(self) -> None:
        """FD-TNN has no decay, SKI-TNN's gamma is its warp; neither has a kernel activation or normalize."""
        if self.operator == "tnn":
            return
        if self.operator == "fd" and self.decay != "none":
            raise ValueError(f"operator 'fd' has no decay: decay must be 'none', got {self.decay!r}")
        if self.operator == "ski":
            if self.decay != "fixed":
                raise ValueError(
                    f"operator 'ski' warps lags with a fixed gamma: decay must be 'fixed', got {self.decay!r}"
                )
            if self.ski_rank < 2:
                raise ValueError(f"ski_rank must be >= 2, got {self.ski_rank}")
            if self.ski_taps < 1 or self.ski_taps % 2 == 0:
                raise ValueError(f"ski_taps must be a positive odd number, got {self.ski_taps}")
            if not 0.0 < self.gamma < 1.0:
                raise ValueError(f"operator 'ski' needs gamma in (0, 1), got {self.gamma}")
        if self.kernel_act != "none" or self.normalize:
            raise ValueError(f"operator {self.operator!r} supports neither kernel_act nor normalize")

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
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path} is not valid UTF-8: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc


def _check_positive(name: str, value: Any, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise ValueError(f"{name} must be an integer in [1, {maximum}], got {value!r}")


# JSON type of each annotation: a string "false" is not a bool, true is not an int, 512 is a float
_JSON_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "a boolean (true or false)"),
    "str": ((str,), "a string"),
    "int | tuple[int, ...]": ((int, list, tuple), "an integer or a list of integers"),
}


def _check_types(prefix: str, config: Any) -> None:
    """Every field has its annotated JSON type (strict: no coercion from strings, no bool for a number)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        annotation = str(f.type)
        optional = annotation.endswith("| None")
        if value is None and optional:
            continue
        base = annotation.removesuffix("| None").strip()
        if base == "SsmConfig":
            if not isinstance(value, SsmConfig):
                raise ValueError(f"{prefix}{f.name} must be an object (the SSM conversion) or null, got {value!r}")
            continue
        kinds, described = _JSON_TYPES.get(base, ((str,), "a string"))  # Literal aliases (Decay, ...) are strings
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise ValueError(f"{prefix}{f.name} must be {described}{' or null' if optional else ''}, got {value!r}")


def _check_literal(name: str, value: Any, literal: Any) -> None:
    allowed = get_args(literal)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _reject_unknown(what: str, data: dict[str, Any], cls: type) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{what} has unknown keys {unknown}; known keys are {sorted(known)}")
